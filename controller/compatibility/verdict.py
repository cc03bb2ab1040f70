"""What a compatibility check answers: a verdict made of breaks, each a sentence to act on."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

Part = Literal["input", "output", "param", "signature"]


class Policy(StrEnum):
    BACKWARD = "backward"
    EXACT = "exact"
    NONE = "none"


@dataclass(frozen=True)
class Break:
    """One reason a client written against the contract would stop working.

    ``field`` is the top-level name of the input, output or param concerned (``#0``, ``#1``...
    for positional ones), or ``None`` when the whole signature's kind differs.
    """

    part: Part
    field: str | None
    reason: str


@dataclass(frozen=True)
class Verdict:
    breaks: list[Break] = field(default_factory=list)
    # Differences that break no client but that a person should know of (a param dropped,
    # a default changed): recorded on a live version.
    warnings: list[str] = field(default_factory=list)

    @property
    def compatible(self) -> bool:
        return not self.breaks

    @property
    def reasons(self) -> list[str]:
        return [b.reason for b in self.breaks]

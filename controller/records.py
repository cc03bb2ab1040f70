"""Plain records of the controller's state, passed between the store and the reconciler.

They are what the store reads and writes in one transaction; the reconciler computes new ones
from old ones and what the registry says, with no database in sight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sigserve.routing_table import VersionState

Signature = dict[str, Any]


@dataclass
class VersionRecord:
    version: str
    state: VersionState = VersionState.PENDING
    reasons: list[str] = field(default_factory=list)
    signature: Signature | None = None
    signature_read: bool = False
    decided_against: str | None = None
    decided_at: datetime | None = None
    source: str | None = None

    @property
    def number(self) -> int:
        return int(self.version)


@dataclass
class ModelRecord:
    name: str
    policy: str
    default_version: str | None = None
    contract: Signature | None = None
    versions: dict[str, VersionRecord] = field(default_factory=dict)

    def sorted_versions(self) -> list[VersionRecord]:
        return sorted(self.versions.values(), key=lambda v: v.number)

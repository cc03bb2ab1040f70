"""What a pass that found nothing to do read, kept so that the model's next pass, reading the
same, stops there: no second load of the record, no decision, no write transaction.

A pass is a function of the stored record, the registry's reads of the model (the registered
model: creation time, aliases, tags; every version: status, source, tags, creation time) and
what the controller was started with (the serving environment, the policies' defaults, the
alias, the allowed artifact sources): the clock only stamps what changes (``decided_at``, an
alias refusal's time). So a pass that ends with nothing changed, nothing read from an artifact
and nothing to retry has shown that the record is what those reads decide; a later pass that
finds the record unwritten since (its generation and last write time, ``Store.stamp``: every
write moves both, whoever makes it) and reads the same from the registry would decide the
same, and write nothing. It still reports what that pass found (the registry behind the
decision: the write-back lane puts it back).

Kept per model, in memory (a 16-byte digest of the reads, the stamp, one flag: ~2 MB at 10,000
models), for this process only: a restart, a new leader and every write start from a full
pass. What only the full pass sees (a tag on an older version, a deleted version, an alias
moved, a model tag, with their webhooks lost) moves the reads, so that pass decides it.
docs/architecture.md, "What the resync sees".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from controller.registry_reads import ObservedModel, ObservedVersion

# A model's generation and last write time (``Store.stamp``); None: not stored.
Stamp = tuple[int, datetime | None] | None


def reads_digest(info: ObservedModel, observed: list[ObservedVersion]) -> bytes:
    """Everything of the registry's reads a pass decides from, as a digest (``repr`` of strings
    is unambiguous, so equal digests mean equal reads, save a BLAKE2 collision)."""
    what = (
        info.created_at,
        sorted(info.aliases.items()),
        sorted(info.tags.items()),
        sorted(
            (v.version, v.status, v.source, sorted(v.tags.items()), v.created_at)
            for v in observed
        ),
    )
    return hashlib.blake2b(repr(what).encode(), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Kept:
    stamp: Stamp
    reads: bytes
    # What that pass found: the registry shows something other than the decision.
    registry_behind: bool


class Unchanged:
    """The last pass that found nothing to do, per model. Passes of one model never overlap
    (the worker's queue), and each touches only its own model's entry."""

    def __init__(self) -> None:
        self._kept: dict[str, Kept] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def same(self, name: str, stamp: Stamp) -> Kept | None:
        """What the last pass that found nothing kept, if the record was not written since."""
        kept = self._kept.get(name)
        return kept if kept is not None and stamp is not None and kept.stamp == stamp else None

    def keep(self, name: str, kept: Kept) -> None:
        self._kept[name] = kept

    def forget(self, name: str) -> None:
        self._kept.pop(name, None)

"""One read of many models, shared by the passes that follow it.

A pass reads its registered model (``Registry.model``: creation time, tags, aliases) and its
versions (``Registry.versions``). When other models wait in the worker's queue, each of those
reads asks MLflow for theirs too, in the same request (``search_registered_models`` and
``search_model_versions`` with ``name IN (...)``: 0.1-0.17 s for 200 models against 1.9-2.5 s
for one request each, ``benchmarks/versions_in_filter.py``), and keeps what it found for each
until that model's pass takes it.

What makes a shared read as fresh as a read of the pass's own (docs/architecture.md, "The
worker"): a pass takes a kept read only if the read *began after the last time the model was
asked for* (a webhook, a retry, the resync, an admin command; ``asked``). The ask that queued
the model came after the registry change it announces (MLflow delivers a webhook after its
commit), so a read begun after the ask sees that change, as the pass's own read would. A model
asked for again after the read began (a newer change) is read again. What no ask announces (a
version deleted, which fires no webhook) is no better seen by a read of its own taken a little
later: the resync finds both. A kept read is also dropped after ``keep_s``, so a pass never
works from an old one whatever the asks say.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from controller.registry_reads import batchable

V = TypeVar("V")
# Models per shared read: a request of a few KB of names, and of their versions in one answer.
BATCH = 50


class ManyRefused(Exception):
    """A read of many refused by the registry (its filter, its size): the pass reads its own
    model alone, so a model waiting beside it never fails its pass."""


class SharedReads:
    """Reads of many models, kept per model for its next pass; thread-safe (asks come
    from the event loop, reads from the passes' threads)."""

    def __init__(
        self,
        peers: Callable[[], list[str]],
        *,
        batch: int = BATCH,
        keep_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The names waiting for a pass now, the next first (the worker's queue).
        self._peers = peers
        self._batch = batch
        self._keep_s = keep_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seq = 0
        # The sequence number of each model's latest ask.
        self._asks: dict[str, int] = {}
        # Per (read, model): the sequence number when the read began, when it ended, what it
        # found.
        self._kept: dict[tuple[str, str], tuple[int, float, object]] = {}
        self.shared = 0

    def asked(self, name: str) -> None:
        with self._lock:
            self._seq += 1
            self._asks[name] = self._seq

    def _fresh(self, key: tuple[str, str], now: float) -> bool:
        kept = self._kept.get(key)
        return (
            kept is not None
            and kept[0] >= self._asks.get(key[1], 0)
            and now - kept[1] < self._keep_s
        )

    def read(
        self,
        kind: str,
        name: str,
        one: Callable[[str], V],
        many: Callable[[list[str]], dict[str, V]],
        empty: Callable[[], V],
    ) -> tuple[V, str]:
        """``name``'s read of ``kind`` and how it was made: "shared" (kept from another pass's
        read), "many" (read with the models waiting, kept for them) or "one". ``empty``: what
        a model missing from the answer of ``many`` has."""
        now = self._clock()
        key = (kind, name)
        with self._lock:
            if self._fresh(key, now):
                self.shared += 1
                return self._kept.pop(key)[2], "shared"  # type: ignore[return-value]
            self._kept.pop(key, None)
            began = self._seq
            try:
                waiting = self._peers()
            except RuntimeError:  # the queue changed under the copy: read alone this time
                waiting = []
            others = [
                n for n in waiting
                if n != name and batchable(n) and not self._fresh((kind, n), now)
            ]  # fmt: skip
            others = others[: self._batch - 1] if batchable(name) else []
        if not others:
            return one(name), "one"
        try:
            found = many([name, *others])
        except ManyRefused:
            return one(name), "one"
        ended = self._clock()
        with self._lock:
            for other in others:
                self._kept[(kind, other)] = (began, ended, found.get(other, empty()))
            for stale in [k for k, kept in self._kept.items() if ended - kept[1] >= self._keep_s]:
                del self._kept[stale]
        return found.get(name, empty()), "many"

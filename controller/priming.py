"""What a fresh database's first table waits for: every model the registry listed, reconciled.

A database that never published is a new *epoch*, and replicas obey a new epoch at once
(``wire.routing_table.supersedes``): a first table that lacked a model would turn it into 404
on every replica, whatever they served before. So the first table goes out only once each
model the first resync listed was reconciled once (``Worker.prime``); until then the long-poll
answers 204 and replicas keep the table they hold. There is no time bound: a model whose
registry reads keep failing temporarily holds the first table back, and says so (a warning
naming it, every ``report_every_s``), rather than be served as 404. A pass that failed for
good (the registry refused, a bug) counts as done: trying again soon cannot help, and waiting
for it would hold every other model back until the resync. How long a registry takes to prime:
docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)
# Names a log line lists at most (the count says how many more).
_NAMED = 20


class Priming:
    """The names listed and those reconciled since priming began; the moment all are."""

    def __init__(self, clock: Callable[[], float], *, report_every_s: float = 30.0) -> None:
        self._clock = clock
        self._report_every_s = report_every_s
        self.started = clock()
        self._listed: set[str] | None = None
        # Since priming began, listed or not yet: a pass may end before the listing returns.
        self._done: set[str] = set()
        self._complete = asyncio.Event()
        self._reported_at: float | None = None

    @property
    def waiting_for(self) -> set[str]:
        return (self._listed or set()) - self._done

    def listed(self, names: Iterable[str]) -> None:
        self._listed = set(names)
        self._check()

    def reconciled(self, name: str) -> None:
        self._done.add(name)
        self._check()

    def failed(self, name: str) -> None:
        """A pass over ``name`` failed for now: say what the first table waits for."""
        # Asked at every failed pass: a membership test, not the set of all still waited for
        # (a registry of 10,000 models failing at once would make that quadratic).
        if self._listed is None or name not in self._listed or name in self._done:
            return
        now = self._clock()
        if self._reported_at is not None and now - self._reported_at < self._report_every_s:
            return
        self._reported_at = now
        waiting = sorted(self.waiting_for)
        log.warning(
            "priming for %.0f s: the new epoch's first table waits for %d of %d listed models "
            "(%s); replicas keep the table they hold",
            now - self.started,
            len(waiting),
            len(self._listed or ()),
            ", ".join(waiting[:_NAMED]) + (", ..." if len(waiting) > _NAMED else ""),
            extra={"event": "priming", "waiting_for": waiting[:_NAMED],
                   "waited_s": round(now - self.started, 1)},
        )  # fmt: skip

    async def wait(self) -> float:
        """Until every listed model was reconciled; how long priming took (by its clock)."""
        await self._complete.wait()
        return self._clock() - self.started

    def _check(self) -> None:
        if self._listed is not None and self._listed <= self._done:
            self._complete.set()

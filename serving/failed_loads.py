"""Loads that failed a moment ago, answered from memory until it is time to try again.

Without it, every request to a version that cannot load downloads and loads it again, one after
another (a replica loads one model at a time), holding back every other model's first load on
the replica. A failure is remembered for a window, and the 503's ``Retry-After`` is what is left
of it:

- a failure of the artifact (``serving.load_faults``) for ``base_s``: it is reported, and the
  controller's 409 ends it; after a release by hand, the next request tries again soon;
- a failure of the replica's own (memory, disk, network) for ``base_s`` doubled with each one in
  a row, up to ``max_s``: a store that is down is not asked again every 5 s by every version,
  and a load that passes starts the count again.

No Ray, no MLflow: ``serving.loader`` decides what failed and how; this only remembers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from serving.exceptions import ModelUnavailable

# How many model ids a replica remembers failures of.
_MEMORY = 1000


def unavailable(detail: str, retry_after_s: float, **extensions: Any) -> ModelUnavailable:
    """A 503 ``model-unavailable`` whose ``Retry-After`` is ``retry_after_s``, rounded up."""
    error = ModelUnavailable(detail, **extensions)
    # The class's Retry-After is a default; a remembered failure knows when it is forgotten.
    error.retry_after = max(1, math.ceil(retry_after_s))  # type: ignore[misc]
    return error


def again(error: ModelUnavailable, *, retry_after_s: float | None = None) -> ModelUnavailable:
    """A copy of ``error`` for another request: one instance raised by many would share a
    traceback."""
    seconds = error.retry_after if retry_after_s is None else retry_after_s
    return unavailable(error.detail, seconds or 1, **error.extensions)


class FailedLoads:
    def __init__(
        self, *, base_s: float, max_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._base_s = base_s
        self._max_s = max(max_s, base_s)
        self._clock = clock
        # Model id -> (until when, the error), oldest first; only failures still remembered.
        self._failures: dict[str, tuple[float, ModelUnavailable]] = {}
        # Model id -> the replica's own failures in a row since its last load that passed.
        self._streaks: dict[str, int] = {}

    def check(self, value: str) -> None:
        """Raise the error of a load of ``value`` that failed less than a window ago, if any."""
        failure = self._failures.get(value)
        if failure is None:
            return
        until, error = failure
        now = self._clock()
        if now >= until:
            del self._failures[value]
            return
        raise again(error, retry_after_s=until - now)

    def failed(
        self, value: str, detail: str, *, replicas_fault: bool, **extensions: Any
    ) -> ModelUnavailable:
        """Remember that loading ``value`` failed; the error to answer with."""
        if replicas_fault:
            streak = self._streaks.pop(value, 0) + 1
            self._streaks[value] = streak  # re-inserted: the latest last, the oldest dropped
            _bound(self._streaks)
            window = min(self._base_s * 2 ** (streak - 1), self._max_s)
        else:
            self._streaks.pop(value, None)
            window = self._base_s
        error = unavailable(detail, window, **extensions)
        now = self._clock()
        self._failures = {k: v for k, v in self._failures.items() if v[0] > now and k != value}
        self._failures[value] = (now + window, error)
        _bound(self._failures)
        return error

    def passed(self, value: str) -> None:
        """A load of ``value`` passed: its next failure starts the count again."""
        self._streaks.pop(value, None)


def _bound(memory: dict[str, Any]) -> None:
    while len(memory) > _MEMORY:
        del memory[next(iter(memory))]

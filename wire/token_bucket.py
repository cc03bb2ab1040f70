"""A token bucket with an injected clock: ``burst`` tokens at most, refilled at ``per_minute``.

No I/O and no lock: callers use one bucket from one event loop. ``serving.load_reports`` keeps
a replica's own reports to a budget with it; ``controller.report_limits`` bounds what the
controller takes from replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# A hair under one token counts as one: refilling in float steps must not lose a report.
_EPSILON = 1e-9


class TokenBucket:
    def __init__(
        self, burst: float, per_minute: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if burst < 1 or per_minute <= 0:
            raise ValueError("a bucket needs a burst of at least 1 and a positive refill")
        self._burst = float(burst)
        self._per_s = per_minute / 60
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def wait_s(self) -> float:
        """Seconds until a token is there; 0 when one is there now."""
        self._refill()
        missing = 1 - _EPSILON - self._tokens
        return max(0.0, missing / self._per_s)

    def spend(self) -> None:
        """Spend a token: call only when ``wait_s`` answered 0."""
        self._refill()
        self._tokens = max(0.0, self._tokens - 1)

    def take(self) -> bool:
        """Spend a token if there is one."""
        if self.wait_s() > 0:
            return False
        self.spend()
        return True

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._at) * self._per_s)
        self._at = now

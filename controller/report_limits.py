"""How many reports the controller takes from serving replicas: per replica, and in all.

A replica keeps its own reports to a budget (``serving.load_reports``: 10 at once, then 12 a
minute), but the serving token is readable by the model code a replica runs (docs/security.md,
"One replica is one trust domain"), and whoever holds it need not go through that budget. So
the controller keeps its own, before a report costs a transaction: a token bucket per replica
id as the report claims it (the id is Ray's, and nothing proves it), and one for every report
it takes, whatever id it claims, which a forger changing ids at every report still meets. A
report past either is answered ``429`` problem+json with ``Retry-After`` (what is left until a
token is there), and counted as ``limited``; load-failure and proof reports share both budgets.

The numbers, from what replicas send: a replica's own budget doubled per id (room for its
retries of a report answered 5xx), and for all together 100 replicas' own budgets, which no
deployment's replicas send at once (they report a version's proof once and a failed load at
most every few seconds). A real deployment never meets either; a forged flood costs the
controller at most 20 transactions a second, and delays real reports (their proofs are sent
again later) rather than deciding anything.

Each controller keeps its own (two controllers take up to twice as many), in memory: a restart
starts them full. Replica ids are kept for the ``_KEPT`` most recent; an id forgotten starts
full again, which the budget for all still bounds.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from fastapi import Request
from fastapi.responses import JSONResponse

from wire.problems import problem_response
from wire.token_bucket import TokenBucket

log = logging.getLogger(__name__)

# A replica's own budget (serving.load_reports: REPORT_BURST, REPORTS_PER_MINUTE), doubled.
PER_REPLICA_BURST = 20
PER_REPLICA_PER_MINUTE = 24.0
# 100 replicas' own budgets.
OVERALL_BURST = 1000
OVERALL_PER_MINUTE = 1200.0
_KEPT = 4096


class ReportLimits:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        per_replica: tuple[int, float] = (PER_REPLICA_BURST, PER_REPLICA_PER_MINUTE),
        overall: tuple[int, float] = (OVERALL_BURST, OVERALL_PER_MINUTE),
        kept: int = _KEPT,
    ) -> None:
        self._clock = clock
        self._per_replica = per_replica
        self._overall = overall
        self._all = TokenBucket(*overall, clock=clock)
        self._replicas: OrderedDict[str, TokenBucket] = OrderedDict()
        self._kept = kept
        # Who is being refused now: logged once when it starts, not at every refusal.
        self._refusing: set[str] = set()

    def refuse(self, replica: str, instance: str) -> JSONResponse | None:
        """Spend one report of ``replica``'s budget and of all replicas'; the 429 to answer
        instead when either is spent (nothing is spent then)."""
        bucket = self._bucket(replica)
        own, everyone = bucket.wait_s(), self._all.wait_s()
        if own == 0 and everyone == 0:
            bucket.spend()
            self._all.spend()
            self._refusing.discard(replica)
            self._refusing.discard("")
            return None
        if own > 0:
            burst, per_minute = self._per_replica
            who, key = f"replica {replica!r}", replica
        else:
            burst, per_minute = self._overall
            who, key = "the replicas together", ""
        detail = (
            f"{who} sent more reports than the controller takes ({burst} at once, then "
            f"{per_minute:g} a minute)"
        )
        if key not in self._refusing and len(self._refusing) < self._kept:
            self._refusing.add(key)
            log.warning("refusing serving reports: %s", detail)
        return problem_response(
            429, slug="too-many-reports", title="Too many reports", detail=detail,
            instance=instance, retry_after=max(1, math.ceil(max(own, everyone))),
        )  # fmt: skip

    def _bucket(self, replica: str) -> TokenBucket:
        bucket = self._replicas.get(replica)
        if bucket is None:
            bucket = TokenBucket(*self._per_replica, clock=self._clock)
            while len(self._replicas) >= self._kept:
                self._replicas.popitem(last=False)
        self._replicas[replica] = bucket
        self._replicas.move_to_end(replica)
        return bucket


def report_limits(request: Request) -> ReportLimits:
    """The app's limits (a dependency): made on first use, one per app, so a test may put its
    own, with its clock, on ``app.state.report_limits``."""
    state = request.app.state
    limits: ReportLimits | None = getattr(state, "report_limits", None)
    if limits is None:
        limits = state.report_limits = ReportLimits()
    return limits

"""A replica's counts per rollout and version, and the task that reports them to the controller.

Counted: each request a rollout routed (it named no version, and its model had a rollout), under
the rollout's id and the version that answered it (the candidate, or the default it is compared
with): one request, an error when it answered 5xx (a failure, a timeout, a version that could not
load), a refusal when it answered 4xx (the contract refused the input: a candidate refusing what
its default takes is judged on it; 429 is load shedding's, and a client that went away, 499, is
nobody's), and its time in the app in ``wire.rollout_report.LATENCY_BUCKETS_MS``. Requests that
name a version are not the rollout's traffic and are not counted here (the ordinary metrics count
them). The shadow's counts (``serving.rollout_shadow``) are kept here too, under the same id.

``RolloutReporter`` posts the totals (``wire.rollout_report``: totals since this replica began
counting for that rollout id, not deltas) to ``POST {controller_url}/serving/rollout-reports``
with the serving token about once a second, while the table it holds has a rollout. A report
refused or not delivered is simply sent again, with newer totals, at the next tick: nothing is
lost and nothing is counted twice. The tick is the budget: one POST a second at most, longer when
the controller answers 429 with Retry-After. Counts of a rollout the table no longer has are
dropped at the next tick (the controller has decided it).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from serving.retry_after import retry_after
from wire.rollout_report import (
    LATENCY_BUCKETS_MS,
    MAX_SAMPLES,
    Disagreement,
    RolloutReport,
    RolloutReports,
    ShadowCounts,
    VersionCounts,
)
from wire.routing_table import RoutingTable

logger = logging.getLogger(__name__)

PATH = "/serving/rollout-reports"
REPORT_INTERVAL_S = 1.0
# The last post, at shutdown, waits at most this long for the controller.
FINAL_POST_S = 5.0
# Reports in one POST: the controller asks for at most 50 (a report with samples is ~60 KB).
_PER_POST = 50
_BOUNDS_S = tuple(b / 1000 for b in LATENCY_BUCKETS_MS)


@dataclass(slots=True)
class _Counts:
    requests: int = 0
    errors: int = 0
    rejected: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))


@dataclass(slots=True)
class ShadowTally:
    compared: int = 0
    agreed: int = 0
    dropped: int = 0
    failed: int = 0
    samples: deque[Disagreement] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))


class RolloutCounts:
    """Totals per (model, rollout id, version), and the shadow's per (model, rollout id)."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str, str], _Counts] = {}
        self._shadows: dict[tuple[str, str], ShadowTally] = {}

    def record(
        self, model: str, rollout_id: str, version: str, status: int, seconds: float
    ) -> None:
        """One routed request answered: on the request path, a lookup and three increments."""
        key = (model, rollout_id, version)
        counts = self._versions.get(key)
        if counts is None:
            counts = self._versions[key] = _Counts()
        counts.requests += 1
        if status >= 500:
            counts.errors += 1
        elif status >= 400 and status != 429:
            counts.rejected += 1
        counts.latency[bisect.bisect_left(_BOUNDS_S, seconds)] += 1

    def shadow(self, model: str, rollout_id: str) -> ShadowTally:
        """The shadow's tally for a rollout, made on first use."""
        key = (model, rollout_id)
        tally = self._shadows.get(key)
        if tally is None:
            tally = self._shadows[key] = ShadowTally()
        return tally

    def reports(self, table: RoutingTable | None) -> list[RolloutReport]:
        """A report for every rollout ``table`` has, the candidate's and the default's totals
        (zeros before their first request); counts of rollouts it no longer has are dropped."""
        found: list[RolloutReport] = []
        current: set[tuple[str, str]] = set()
        for name, model in table.models.items() if table is not None else ():
            rollout = model.rollout
            if rollout is None:
                continue
            current.add((name, rollout.id))
            versions = [rollout.candidate]
            if model.default_version is not None and model.default_version != rollout.candidate:
                versions.append(model.default_version)
            tally = self._shadows.get((name, rollout.id))
            found.append(
                RolloutReport(
                    model=name,
                    rollout_id=rollout.id,
                    versions={v: self._view(name, rollout.id, v) for v in versions},
                    shadow=_shadow_view(tally) if tally is not None or rollout.shadow else None,
                )
            )
        self._forget(current)
        return found

    def _view(self, model: str, rollout_id: str, version: str) -> VersionCounts:
        counts = self._versions.get((model, rollout_id, version))
        if counts is None:
            return VersionCounts()
        return VersionCounts(
            requests=counts.requests,
            errors=counts.errors,
            rejected=counts.rejected,
            latency_ms=list(counts.latency),
        )

    def _forget(self, current: set[tuple[str, str]]) -> None:
        for key in [k for k in self._versions if (k[0], k[1]) not in current]:
            del self._versions[key]
        for shadow_key in [k for k in self._shadows if k not in current]:
            del self._shadows[shadow_key]


def _shadow_view(tally: ShadowTally | None) -> ShadowCounts:
    if tally is None:
        return ShadowCounts()
    return ShadowCounts(
        compared=tally.compared,
        agreed=tally.agreed,
        dropped=tally.dropped,
        failed=tally.failed,
        samples=list(tally.samples),
    )


class RolloutReporter:
    """Posts ``counts``' reports for the table ``table()`` holds, about once a second."""

    def __init__(
        self,
        controller_url: str,
        token: str,
        replica: str,
        counts: RolloutCounts,
        table: Callable[[], RoutingTable | None],
        *,
        interval_s: float = REPORT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = controller_url.rstrip("/") + PATH
        self._headers = {"Authorization": f"Bearer {token}"}
        self._replica = replica
        self._counts = counts
        self._table = table
        self._interval_s = interval_s
        self._clock = clock
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        # A 429's Retry-After: no POST before then.
        self._not_before = 0.0
        # The last outcome logged, so that a controller down is one line, not one a second.
        self._last_problem: str | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sigserve-rollout-reports")

    async def stop(self) -> None:
        """Stop reporting, after one last post of the totals (a replica shutting down): the
        counts since the last tick, and the last shadows', would be lost otherwise."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._not_before = 0.0  # the last post goes, Retry-After or not
            try:
                await asyncio.wait_for(self.tick(), FINAL_POST_S)
            except Exception as exc:
                logger.warning("the last rollout counts were not posted: %r", exc)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.tick()
            except Exception:
                # Reporting must never take the replica down; the next tick sends the totals.
                logger.exception("reporting rollout counts failed")

    async def tick(self) -> bool | None:
        """Post the reports of every rollout in the table: True when the controller took them,
        False when not (sent again next tick), None when there was nothing to send or a 429
        asked to wait."""
        reports = self._counts.reports(self._table())
        if not reports or self._clock() < self._not_before:
            return None
        delivered = True
        for start in range(0, len(reports), _PER_POST):
            body = RolloutReports(
                replica_id=self._replica, reports=reports[start : start + _PER_POST]
            )
            delivered = await self._post(body) and delivered
        return delivered

    async def _post(self, body: RolloutReports) -> bool:
        try:
            response = await self._http().post(
                self._url, content=body.model_dump_json(), headers=self._headers
            )
        except httpx.HTTPError as exc:
            self._problem(f"could not post rollout counts: {exc!r}")
            return False
        if response.status_code == 429:
            self._not_before = self._clock() + retry_after(response, default=1.0)
        if response.status_code >= 300:
            self._problem(
                f"the controller refused rollout counts: {response.status_code} "
                f"{response.text[:300]}"
            )
            return False
        if self._last_problem is not None:
            logger.info("rollout counts delivered again")
            self._last_problem = None
        return True

    def _problem(self, message: str) -> None:
        if message != self._last_problem:
            logger.warning("%s (sent again each second with the totals)", message)
        self._last_problem = message

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(5.0, connect=2.0),
                transport=self._transport,
                headers={"content-type": "application/json"},
            )
        return self._client

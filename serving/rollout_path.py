"""What the API's request path does for rollouts: route, count, shadow (one object, few calls).

``serving.api`` calls ``route`` for a request that names no version, ``keep_for_shadow`` before
it runs a routed request (one random draw, and the body kept when it will be shadowed),
``answered`` once it has its status, and ``shadow`` on the answer the client gets. The parts:
``serving.rollout_routing`` (which version), ``serving.rollout_counts`` (the totals and their
reports), ``serving.rollout_shadow`` (the candidate run off the path, and the comparison).
docs/architecture.md, "Rollouts".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask

from serving.rollout_counts import RolloutCounts, RolloutReporter
from serving.rollout_routing import Routed, choose
from serving.rollout_shadow import RunCandidate, Shadows, body_of, keep_body
from wire.routing_table import ModelEntry, RoutingTable

# The version that produced an answer, on every answer of a request that ran a model.
VERSION_HEADER = "sigserve-model-version"
# How long a replica shutting down lets the shadows running finish.
SHADOWS_STOP_S = 5.0


class RolloutPath:
    def __init__(
        self,
        counts: RolloutCounts | None = None,
        shadows: Shadows | None = None,
        reporter: RolloutReporter | None = None,
        ready: Callable[[ModelEntry], bool] | None = None,
    ) -> None:
        """``ready``: whether this replica holds a model's candidate loaded (in a replica,
        ``serving.rollout_warm``); None: always, as in tests that load on demand."""
        self.counts = counts if counts is not None else RolloutCounts()
        self.shadows = shadows if shadows is not None else Shadows(self.counts)
        self._reporter = reporter
        self._ready = ready

    async def start(self) -> None:
        if self._reporter is not None:
            await self._reporter.start()

    async def stop(self) -> None:
        """A replica shutting down: the shadows under way end (those queued are dropped and
        counted), then the reporter posts the last totals before it stops."""
        await self.shadows.stop(SHADOWS_STOP_S)
        if self._reporter is not None:
            await self._reporter.stop()

    def route(
        self, table: RoutingTable | None, name: str, headers: Mapping[str, str]
    ) -> Routed | None:
        routed = choose(table, name, headers, ready=self._ready)
        if routed is not None:
            self.shadows.client_began()  # ``answered`` ends it, whatever the outcome
        return routed

    async def keep_for_shadow(
        self, routed: Routed | None, request: Request, max_bytes: int | None
    ) -> bool:
        """Whether this request will be shadowed; if so its body is read now and kept."""
        if routed is None:
            self.shadows.client_seen()  # not routed, but a client's: shadows give way to it
            return False
        if not routed.shadowable or not self.shadows.wants(routed.rollout):
            return False
        await keep_body(request, max_bytes)
        return True

    def answered(self, name: str, routed: Routed | None, status: int, seconds: float) -> None:
        if routed is None:
            return
        self.shadows.client_ended()
        if status != 499:  # a client gone is nobody's error nor latency
            self.counts.record(name, routed.rollout.id, routed.version, status, seconds)

    def shadow(
        self, response: Response, name: str, routed: Routed, request: Request, run: RunCandidate
    ) -> None:
        """Queue the shadow once ``response`` is sent (its background task), if it is one
        answer the candidate's can be compared with (not a stream)."""
        if not isinstance(response, JSONResponse) or response.background is not None:
            return
        answer = bytes(response.body)
        body = body_of(request)

        async def queue() -> None:  # a coroutine: Starlette runs a plain function in a thread
            self.shadows.offer(name, routed.rollout, body, answer, run)

        response.background = BackgroundTask(queue)

"""Shadows give way to client requests (serving.rollout_shadow), and a replica shutting down
posts its last counts (serving.rollout_path, serving.rollout_counts). An injected clock decides
when the replica is quiet; the controller is httpx's MockTransport."""

from __future__ import annotations

import asyncio

import httpx
from fastapi.responses import JSONResponse, Response

from serving.rollout_counts import RolloutCounts, RolloutReporter
from serving.rollout_path import RolloutPath
from serving.rollout_routing import Routed
from serving.rollout_shadow import Shadows
from tests.unit.test_serving_rollout_counts import Controller, routing
from wire.routing_table import Rollout

ROLLOUT = Rollout(id="r1", candidate="2", weight=0.1, shadow=1.0)
SETTLE_S = 0.05  # real time for a waiting worker to look again; the clock decides what it sees


class Candidate:
    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self) -> Response:
        self.runs += 1
        return JSONResponse("A")


def test_a_shadow_waits_for_the_clients_and_one_that_waited_too_long_is_dropped() -> None:
    async def scenario() -> None:
        now, counts, candidate = [100.0], RolloutCounts(), Candidate()
        shadows = Shadows(counts, quiet_s=0.001, max_age_s=1.0, clock=lambda: now[0])
        tally = counts.shadow("m", "r1")
        shadows.client_began()  # a client's request is being answered
        shadows.offer("m", ROLLOUT, b'"a"', b'"A"', candidate)
        await asyncio.sleep(SETTLE_S)
        assert candidate.runs == 0
        now[0] += 5.0  # still in flight: no shadow starts beside it
        await asyncio.sleep(SETTLE_S)
        assert candidate.runs == 0
        shadows.client_ended()
        await asyncio.sleep(SETTLE_S)
        assert candidate.runs == 0  # the client's next request may come within quiet_s
        shadows.client_seen()  # and it did (a request routed nowhere counts too)
        now[0] += 0.01
        await shadows.drain()
        # It waited 5 s, past max_age_s: dropped and counted, never run.
        assert (candidate.runs, tally.compared, tally.dropped) == (0, 0, 1)
        shadows.client_seen()
        shadows.offer("m", ROLLOUT, b'"a"', b'"A"', candidate)
        await asyncio.sleep(SETTLE_S)
        assert candidate.runs == 0  # the last client is not quiet_s ago
        now[0] += 0.01  # now it is: the shadow runs
        await shadows.drain()
        assert (candidate.runs, tally.compared, tally.agreed, tally.dropped) == (1, 1, 1, 1)

    asyncio.run(scenario())


def test_a_replica_shutting_down_posts_its_last_counts_and_shadows() -> None:
    async def scenario() -> None:
        counts, controller, candidate = RolloutCounts(), Controller([]), Candidate()
        reporter = RolloutReporter(
            "http://controller", "token", "replica-a", counts, lambda: routing(shadow=1.0),
            interval_s=3600, transport=httpx.MockTransport(controller),
        )  # fmt: skip
        path = RolloutPath(counts, Shadows(counts, quiet_s=0.001), reporter)
        await path.start()
        routed = Routed("2", ROLLOUT, candidate=True)
        for _ in range(3):
            path.route(None, "m", {})  # the table holds no rollout: routed nowhere
            path.answered("m", routed, 200, 0.001)
        path.shadows.offer("m", ROLLOUT, b'"a"', b'"A"', candidate)
        await path.shadows.drain()
        path.shadows.offer("m", ROLLOUT, b'"b"', b'"B"', candidate)  # still queued at the end
        await path.stop()
        (body,) = controller.bodies  # no tick came in an hour: the last post is the only one
        (report,) = body.reports
        assert report.versions["2"].requests == 3
        assert report.shadow is not None
        assert (report.shadow.compared, report.shadow.dropped) == (1, 1)

    asyncio.run(scenario())

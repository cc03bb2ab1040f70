"""A replica's rollout counts and their reports (serving.rollout_counts), against a stand-in
controller on httpx's MockTransport and an injected clock."""

from __future__ import annotations

import asyncio
import json

import httpx

from serving.rollout_counts import PATH, RolloutCounts, RolloutReporter
from wire.rollout_report import LATENCY_BUCKETS_MS, RolloutReports
from wire.routing_table import ModelEntry, Rollout, RoutingTable, VersionEntry, VersionState


def routing(rollout_id: str | None = "r1", shadow: float = 0.0) -> RoutingTable:
    versions = {v: VersionEntry(version=v, state=VersionState.LIVE) for v in ("1", "2")}
    rollout = (
        Rollout(id=rollout_id, candidate="2", weight=0.1, shadow=shadow) if rollout_id else None
    )
    return RoutingTable(
        revision=1,
        models={"m": ModelEntry(name="m", default_version="1", versions=versions, rollout=rollout)},
    )


def test_requests_errors_and_latency_buckets_per_version() -> None:
    counts = RolloutCounts()
    counts.record("m", "r1", "2", 200, 0.0004)  # under 1 ms: the first bucket
    counts.record("m", "r1", "2", 500, 0.003)  # 2-5 ms
    counts.record("m", "r1", "2", 504, 30.0)  # a timeout, above the last bound
    counts.record("m", "r1", "2", 422, 0.001)  # refused: not an error, a refusal
    counts.record("m", "r1", "2", 429, 0.001)  # shed under load: neither
    counts.record("m", "r1", "1", 200, 0.0015)
    (report,) = counts.reports(routing())
    assert report.model == "m" and report.rollout_id == "r1"
    candidate, default = report.versions["2"], report.versions["1"]
    assert (candidate.requests, candidate.errors, candidate.rejected) == (5, 2, 1)
    assert (default.requests, default.errors, default.rejected) == (1, 0, 0)
    assert candidate.latency_ms[0] == 3  # 0.4 ms and exactly 1 ms: "<= 1"
    assert candidate.latency_ms[LATENCY_BUCKETS_MS.index(5)] == 1
    assert candidate.latency_ms[-1] == 1
    assert default.latency_ms[LATENCY_BUCKETS_MS.index(2)] == 1
    assert report.shadow is None


def test_a_version_not_yet_asked_reports_zeros_and_a_shadow_reports_its_counts() -> None:
    counts = RolloutCounts()
    (report,) = counts.reports(routing(shadow=0.5))
    assert report.versions["2"].requests == 0 and report.versions["1"].requests == 0
    assert report.shadow is not None and report.shadow.compared == 0


def test_counts_of_a_rollout_the_table_no_longer_has_are_dropped() -> None:
    counts = RolloutCounts()
    counts.record("m", "r1", "2", 200, 0.001)
    assert counts.reports(routing(None)) == []
    counts.record("m", "r2", "2", 200, 0.001)
    (report,) = counts.reports(routing("r2"))
    assert report.versions["2"].requests == 1  # r1's request is not summed into r2
    (again,) = counts.reports(routing("r1"))
    assert again.versions["2"].requests == 0


class Controller:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[RolloutReports] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == PATH
        self.bodies.append(RolloutReports.model_validate_json(request.content))
        self.headers.append(request.headers)
        status = self.statuses.pop(0) if self.statuses else 200
        return httpx.Response(status, headers={"retry-after": "30"} if status == 429 else {})


def reporter(
    controller: Controller, counts: RolloutCounts, held: list[RoutingTable | None], now: list[float]
) -> RolloutReporter:
    return RolloutReporter(
        "http://controller/",
        "token",
        "replica-a",
        counts,
        lambda: held[0],
        clock=lambda: now[0],
        transport=httpx.MockTransport(controller),
    )


def test_a_refused_post_is_sent_again_next_tick_with_the_totals() -> None:
    async def scenario() -> None:
        counts, controller, now = RolloutCounts(), Controller([503]), [0.0]
        held: list[RoutingTable | None] = [routing()]
        sender = reporter(controller, counts, held, now)
        counts.record("m", "r1", "2", 200, 0.001)
        assert await sender.tick() is False  # the controller answered 503
        counts.record("m", "r1", "2", 500, 0.001)
        assert await sender.tick() is True
        first, second = controller.bodies
        assert second.replica_id == "replica-a"
        assert first.reports[0].versions["2"].requests == 1
        # Totals, not deltas: the lost report's request is in the next one.
        assert (
            second.reports[0].versions["2"].requests,
            second.reports[0].versions["2"].errors,
        ) == (2, 1)
        assert controller.headers[0]["authorization"] == "Bearer token"
        held[0] = routing(None)  # the rollout left the table: nothing more is posted
        assert await sender.tick() is None
        assert len(controller.bodies) == 2
        await sender.stop()

    asyncio.run(scenario())


def test_a_429_is_waited_out_then_reporting_goes_on() -> None:
    async def scenario() -> None:
        counts, controller, now = RolloutCounts(), Controller([429]), [100.0]
        sender = reporter(controller, counts, [routing()], now)
        assert await sender.tick() is False
        now[0] = 120.0
        assert await sender.tick() is None  # Retry-After: 30 s, not over yet
        now[0] = 130.5
        assert await sender.tick() is True
        assert len(controller.bodies) == 2
        await sender.stop()

    asyncio.run(scenario())


def test_the_controller_down_is_retried_next_tick() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def scenario() -> None:
        counts = RolloutCounts()
        sender = RolloutReporter(
            "http://controller", "t", "r", counts, lambda: routing(),
            transport=httpx.MockTransport(down),
        )  # fmt: skip
        assert await sender.tick() is False
        await sender.stop()

    asyncio.run(scenario())


def test_the_report_is_the_wire_contract() -> None:
    counts = RolloutCounts()
    counts.record("m", "r1", "1", 200, 0.001)
    (report,) = counts.reports(routing(shadow=1.0))
    body = json.loads(RolloutReports(replica_id="x", reports=[report]).model_dump_json())
    assert set(body["reports"][0]) == {"model", "rollout_id", "versions", "shadow"}

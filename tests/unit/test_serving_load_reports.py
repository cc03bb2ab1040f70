"""Reports of artifacts a replica could not load: what leaves the replica, how often, and what
happens when the controller is down or refuses. The controller is an httpx MockTransport."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from serving.load_reports import LoadFailureReporter
from serving.loader import LoadFailure

FAILURE = LoadFailure("m", "2", "ab" * 32, "load-failed", "UnpicklingError: truncated")


class Controller:
    """Answers each report with the next status of ``statuses`` (then 200), and keeps them."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 0:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(status, json={"recorded": True, "state": "quarantined"})

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


def reporter(controller: Controller) -> LoadFailureReporter:
    return LoadFailureReporter(
        "http://controller:8080/",
        "serving-token",
        "replica-7",
        backoff_s=0.0,
        transport=httpx.MockTransport(controller),
    )


def run(reporter: LoadFailureReporter, *failures: LoadFailure) -> None:
    async def go() -> None:
        for failure in failures:
            reporter.report(failure)
        await reporter.drain()

    asyncio.run(go())


def test_a_report_names_the_artifact_and_the_replica_with_the_serving_token() -> None:
    controller = Controller()
    run(reporter(controller), FAILURE)
    (request,) = controller.requests
    assert request.url == "http://controller:8080/serving/load-failures"
    assert request.headers["authorization"] == "Bearer serving-token"
    assert controller.bodies() == [
        {
            "model": "m",
            "version": "2",
            "mlmodel_digest": "ab" * 32,
            "kind": "load-failed",
            "cause": "UnpicklingError: truncated",
            "replica": "replica-7",
        }
    ]


def test_a_controller_that_is_down_or_failing_is_tried_again_then_given_up_on() -> None:
    controller = Controller(0, 503, 200)
    run(reporter(controller), FAILURE)
    assert len(controller.requests) == 3  # refused connection, 503, then taken
    gone = Controller(0, 0, 0, 0, 0)
    run(reporter(gone), FAILURE)
    assert len(gone.requests) == 4  # the attempts allowed, then dropped without an error


def test_a_refusal_is_not_retried() -> None:
    for status in (401, 404, 409, 422):
        controller = Controller(status)
        run(reporter(controller), FAILURE)
        assert len(controller.requests) == 1, status


def test_a_flood_of_failures_sends_a_bounded_number_of_reports() -> None:
    # 50 artifacts failing at once on one replica (a bad image, say): the controller hears a
    # burst, not 50 requests; the ones dropped are reported again on their next failed load.
    controller = Controller()
    failures = [LoadFailure("m", str(v), "ab" * 32, "load-failed", "cause") for v in range(50)]
    run(reporter(controller), *failures)
    assert 1 <= len(controller.requests) <= 10
    assert [b["version"] for b in controller.bodies()] == [
        str(v) for v in range(len(controller.requests))
    ]


def test_the_report_budget_refills_with_time() -> None:
    controller = Controller()
    now = [0.0]
    sender = LoadFailureReporter(
        "http://controller:8080",
        "serving-token",
        "replica-7",
        burst=2,
        per_minute=6,
        clock=lambda: now[0],
        transport=httpx.MockTransport(controller),
    )
    run(sender, FAILURE, FAILURE, FAILURE)
    assert len(controller.requests) == 2
    now[0] += 9.9  # one report per 10 s: not yet
    run(sender, FAILURE)
    assert len(controller.requests) == 2
    now[0] += 0.1
    run(sender, FAILURE, FAILURE)
    assert len(controller.requests) == 3

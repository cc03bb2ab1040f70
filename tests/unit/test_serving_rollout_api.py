"""Rollouts through the real HTTP API (a test client, the real model host and batcher, models
made in-process): routing, the version header, counting and the shadow. Models that wait do so
on events the test sets, never on a timer."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serving.api import create_app
from serving.loader import LoadedModel
from serving.model_host import ModelHost
from serving.recorder import NoRecorder
from serving.resolve import Target
from serving.rollout_path import VERSION_HEADER, RolloutPath
from serving.rollout_routing import ROUTING_KEY_HEADER
from serving.rollout_shadow import Shadows
from serving.table_source import TableSource
from tests.unit.test_serving_api import V1, Controller, checked
from wire.rollout_report import RolloutReport
from wire.routing_table import ModelEntry, Rollout, RoutingTable, VersionEntry, VersionState

WAIT_S = 10.0  # bounds a wait that should end at once; only reached when a test fails
# version -> its answer to one prompt; a version that raises fails its request (500).
Behaviour = Callable[[str], str]


def same(prompt: str) -> str:
    return prompt.upper()


def table(
    weight: float = 0.0, shadow: float = 0.0, candidate_state: VersionState = VersionState.LIVE
) -> RoutingTable:
    versions = {
        "1": VersionEntry(version="1", state=VersionState.LIVE, signature=V1, **checked("1")),
        "2": VersionEntry(version="2", state=candidate_state, signature=V1, **checked("2")),
    }
    rollout = Rollout(id="r1", candidate="2", weight=weight, shadow=shadow)
    model = ModelEntry(
        name="echo", default_version="1", contract=V1, versions=versions, rollout=rollout
    )
    return RoutingTable(revision=5, models={"echo": model})


class Model:
    def __init__(
        self,
        version: str,
        behaviour: Behaviour,
        gate: threading.Event | None,
        entered: threading.Event,
    ) -> None:
        self.version, self.behaviour, self.gate, self.entered = version, behaviour, gate, entered

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT_S)
        return pd.DataFrame({"out": [self.behaviour(p) for p in data["prompt"]]})


class Backend(ModelHost):
    def __init__(
        self, behaviours: dict[str, Behaviour], gates: dict[str, threading.Event] | None = None
    ) -> None:
        self.entered = {v: threading.Event() for v in behaviours}
        self.predicted: list[str] = []

        async def get_model(target: Target) -> LoadedModel:
            version = target.version.version
            self.predicted.append(version)
            model = Model(
                version, behaviours[version], (gates or {}).get(version), self.entered[version]
            )
            return LoadedModel(model, Path("/nonexistent/sigserve-test"))

        super().__init__(get_model)


class Requests(NoRecorder):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def request(self, model: str, version: str, status: int, seconds: float) -> None:
        self.seen.append((model, version, status))


def client(routing: RoutingTable, backend: Backend, **kwargs: Any) -> TestClient:
    source = TableSource("http://controller", transport=httpx.MockTransport(Controller()))
    source.offer(routing)
    return TestClient(create_app(source, backend, **kwargs), raise_server_exceptions=False)


def report(rollouts: RolloutPath, routing: RoutingTable) -> RolloutReport:
    (found,) = rollouts.counts.reports(routing)
    return found


def drain(test_client: TestClient, rollouts: RolloutPath) -> None:
    test_client.portal.call(rollouts.shadows.drain)  # type: ignore[union-attr]


def versions_of(responses: list[httpx.Response]) -> list[str]:
    return [r.headers[VERSION_HEADER] for r in responses]


@pytest.mark.parametrize(
    ("method", "path", "body", "version"),
    [
        ("post", "/models/echo/serve", {"prompt": "a"}, "1"),
        ("post", "/models/echo/versions/2/serve", {"prompt": "a"}, "2"),
        ("post", "/models/echo/invocations", {"dataframe_records": [{"prompt": "a"}]}, "1"),
        (
            "post",
            "/models/echo/versions/2/invocations",
            {"dataframe_records": [{"prompt": "a"}]},
            "2",
        ),
        (
            "post",
            "/v2/models/echo/infer",
            {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
            "1",
        ),
    ],
)
def test_every_answer_names_the_version_that_produced_it(
    method: str, path: str, body: Any, version: str
) -> None:
    with client(table(), Backend({"1": same, "2": same})) as c:
        response = c.request(method, path, json=body)
        assert response.status_code == 200, response.text
        assert response.headers[VERSION_HEADER] == version


@pytest.mark.parametrize(
    ("path", "headers", "ran"),
    [
        ("/models/echo/versions/1/serve", {}, "1"),
        ("/models/echo/serve", {"serve_multiplexed_model_id": "1"}, "1"),
        (
            "/models/echo/serve",
            {"serve-multiplexed-model-id": "echo/1", ROUTING_KEY_HEADER: "k"},
            "1",
        ),
        ("/models/echo/serve", {}, "2"),
    ],
)
def test_a_request_that_names_a_version_is_never_rerouted(
    path: str, headers: dict[str, str], ran: str
) -> None:
    # Weight 1: every request that names no version goes to the candidate, no other.
    backend = Backend({"1": lambda p: "one", "2": lambda p: "two"})
    with client(table(weight=1.0), backend) as c:
        responses = [c.post(path, json={"prompt": "a"}, headers=headers) for _ in range(20)]
    assert set(versions_of(responses)) == {ran}
    assert {r.json()[0]["out"] for r in responses} == {"one" if ran == "1" else "two"}


def test_weights_and_routing_keys_through_the_app() -> None:
    backend = Backend({"1": same, "2": same})
    with client(table(weight=0.3), backend) as c:
        spread = versions_of(
            [c.post("/models/echo/serve", json={"prompt": "a"}) for _ in range(400)]
        )
        # 400 draws at 0.3: a standard deviation of 0.023; five of them bound it.
        assert abs(spread.count("2") / 400 - 0.3) <= 5 * (0.3 * 0.7 / 400) ** 0.5
        for key in ("alice", "bob", "carol", "dave"):
            seen = versions_of(
                [
                    c.post(
                        "/models/echo/serve",
                        json={"prompt": "a"},
                        headers={ROUTING_KEY_HEADER: key},
                    )
                    for _ in range(15)
                ]
            )
            assert len(set(seen)) == 1, (key, seen)


@pytest.mark.parametrize("state", [VersionState.PENDING, VersionState.QUARANTINED])
def test_a_candidate_not_live_in_the_table_never_answers(state: VersionState) -> None:
    backend = Backend({"1": same, "2": same})
    with client(table(weight=1.0, candidate_state=state), backend) as c:
        responses = [c.post("/models/echo/serve", json={"prompt": "a"}) for _ in range(20)]
    assert {r.status_code for r in responses} == {200}
    assert set(versions_of(responses)) == {"1"}
    assert "2" not in backend.predicted


def test_routed_requests_are_counted_per_version_and_named_ones_are_not() -> None:
    def fails(prompt: str) -> str:
        if prompt == "bad":
            raise RuntimeError("the candidate cannot")
        return prompt

    rollouts, routing = RolloutPath(), table(weight=1.0)
    with client(routing, Backend({"1": same, "2": fails}), rollouts=rollouts) as c:
        assert c.post("/models/echo/serve", json={"prompt": "ok"}).status_code == 200
        assert c.post("/models/echo/serve", json={"prompt": "bad"}).status_code == 500
        assert c.post("/models/echo/serve", json={"nope": 1}).status_code == 422  # the client's
        assert c.post("/models/echo/versions/1/serve", json={"prompt": "ok"}).status_code == 200
        assert c.post("/models/echo/versions/2/serve", json={"prompt": "bad"}).status_code == 500
    counted = report(rollouts, routing)
    candidate, default = counted.versions["2"], counted.versions["1"]
    assert (candidate.requests, candidate.errors) == (3, 1)
    assert sum(candidate.latency_ms) == 3
    assert (default.requests, default.errors) == (0, 0)


def test_a_shadow_compares_the_candidates_answers_and_the_client_gets_the_defaults() -> None:
    def differs_on_b(prompt: str) -> str:
        return "something else" if prompt.startswith("b") else prompt.upper()

    recorder, rollouts, routing = Requests(), RolloutPath(), table(shadow=1.0)
    backend = Backend({"1": same, "2": differs_on_b})
    with client(routing, backend, rollouts=rollouts, recorder=recorder) as c:
        prompts = ["a1", "b1", "a2", "a3", "b2"]
        responses = [c.post("/models/echo/serve", json={"prompt": p}) for p in prompts]
        drain(c, rollouts)
    assert [r.json() for r in responses] == [[{"out": p.upper()}] for p in prompts]
    assert set(versions_of(responses)) == {"1"}
    shadow = report(rollouts, routing).shadow
    assert shadow is not None
    assert (shadow.compared, shadow.agreed, shadow.dropped, shadow.failed) == (5, 3, 0, 0)
    assert [(s.input, s.default, s.candidate) for s in shadow.samples] == [
        ('{"prompt":"b1"}', '[{"out": "B1"}]', '[{"out": "something else"}]'),
        ('{"prompt":"b2"}', '[{"out": "B2"}]', '[{"out": "something else"}]'),
    ]
    # The shadow ran on the candidate, and counted in neither the client's metrics nor the
    # rollout's per-version counts.
    assert backend.predicted.count("2") == 5
    assert recorder.seen == [("echo", "1", 200)] * 5
    assert report(rollouts, routing).versions["2"].requests == 0


def test_a_client_never_waits_for_its_shadow_and_a_full_queue_drops() -> None:
    gate = threading.Event()
    backend = Backend({"1": same, "2": same}, gates={"2": gate})
    counts_path = RolloutPath()
    rollouts = RolloutPath(counts_path.counts, Shadows(counts_path.counts, queue_size=2, workers=1))
    routing = table(shadow=1.0)
    with client(routing, backend, rollouts=rollouts) as c:
        try:
            first = c.post("/models/echo/serve", json={"prompt": "a"})
            # The candidate is stuck in its predict, and the client already has its answer.
            assert backend.entered["2"].wait(WAIT_S)
            assert first.status_code == 200 and first.json() == [{"out": "A"}]
            more = [c.post("/models/echo/serve", json={"prompt": f"x{i}"}) for i in range(4)]
            assert [r.status_code for r in more] == [200] * 4
            assert rollouts.shadows.queued("echo") == 2
        finally:
            gate.set()
        drain(c, rollouts)
    shadow = report(rollouts, routing).shadow
    assert shadow is not None
    assert (shadow.compared, shadow.agreed, shadow.dropped) == (3, 3, 2)


def test_a_candidate_that_fails_its_shadow_is_counted_failed_and_the_client_never_sees_it() -> None:
    def broken(prompt: str) -> str:
        raise RuntimeError("candidate broken")

    rollouts, routing = RolloutPath(), table(shadow=1.0)
    with client(routing, Backend({"1": same, "2": broken}), rollouts=rollouts) as c:
        responses = [c.post("/models/echo/serve", json={"prompt": "a"}) for _ in range(3)]
        drain(c, rollouts)
    assert {r.status_code for r in responses} == {200}
    shadow = report(rollouts, routing).shadow
    assert shadow is not None and (shadow.compared, shadow.failed) == (0, 3)


def test_the_shadow_queue_is_bounded_in_bytes_too() -> None:
    gate = threading.Event()
    backend = Backend({"1": same, "2": same}, gates={"2": gate})
    base = RolloutPath()
    # Room for one queued body of ~1 KB and its answer, not two.
    shadows = Shadows(base.counts, queue_size=64, queue_bytes=3_000, workers=1)
    rollouts, routing = RolloutPath(base.counts, shadows), table(shadow=1.0)
    with client(routing, backend, rollouts=rollouts) as c:
        try:
            assert c.post("/models/echo/serve", json={"prompt": "a"}).status_code == 200
            assert backend.entered["2"].wait(WAIT_S)  # the worker holds the first shadow
            for _ in range(3):
                response = c.post("/models/echo/serve", json={"prompt": "x" * 1_000})
                assert response.status_code == 200
            assert rollouts.shadows.queued("echo") == 1
        finally:
            gate.set()
        drain(c, rollouts)
    shadow = report(rollouts, routing).shadow
    assert shadow is not None and (shadow.compared, shadow.dropped) == (2, 2)


def test_a_stream_names_its_version_too() -> None:
    from tests.unit.test_serving_streaming import SSE, client_for
    from tests.unit.test_serving_streaming import Backend as StreamingBackend

    with client_for(StreamingBackend()) as c:
        for path, version in (("/models/echo/serve", "1"), ("/models/echo/versions/2/serve", "2")):
            response = c.post(path, json={"prompt": "a b"}, headers=SSE)
            assert response.status_code == 200, response.text
            assert response.headers[VERSION_HEADER] == version

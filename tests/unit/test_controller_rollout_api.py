"""The rollouts' admin API and the replicas' report endpoint, through the real app: starts and
their refusals (problem+json naming the field), status with counts, abort and promote by hand,
reports with the serving token on their own budget."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.database import make_engine, migrate
from controller.reconciler import Reconciler
from controller.report_limits import ReportLimits
from controller.rollout_gates import Totals
from controller.rollout_reports import MAX_BODY
from controller.services import Services
from controller.store import Store
from tests.unit.test_controller_audit_and_overrides import ENV, Registry, sig
from tests.unit.test_controller_http import _settings
from wire.rollout_report import LATENCY_BUCKETS_MS

SERVING_TOKEN = "serving-token-0123456789abcdef"
ADMIN = {"Authorization": "Bearer admin-token-0123456789"}
SERVING = {"Authorization": f"Bearer {SERVING_TOKEN}"}


@pytest.fixture()
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # The stepper's loop looks once at start; the tests tick it themselves.
    settings = _settings(tmp_path, serving_token=SERVING_TOKEN, rollout_interval_s=3600)
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    s = Store(engine)
    registry = Registry({"1": sig("p"), "2": sig("p"), "3": sig("q")})
    Reconciler(s, registry, ENV, write_back=False).reconcile("m", "resync")
    s.publish()
    engine.dispose()
    with TestClient(create_app(settings)) as c:
        yield c


def svc(client: TestClient) -> Services:
    s: Services = client.app.state.services  # type: ignore[attr-defined]
    return s


def start(client: TestClient, **body: Any) -> Any:
    return client.post("/admin/models/m/rollouts", json={"candidate": "2", **body}, headers=ADMIN)


def report(rollout_id: str, candidate: int, default: int, replica: str = "r1") -> dict[str, Any]:
    def counts(n: int) -> dict[str, Any]:
        latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        latency[2] = n
        return {"requests": n, "errors": 0, "latency_ms": latency}

    sample = {"input": '{"p": "x"}', "default": '"a"', "candidate": '"b"'}
    return {"replica_id": replica, "reports": [{
        "model": "m", "rollout_id": rollout_id,
        "versions": {"2": counts(candidate), "1": counts(default)},
        "shadow": {"compared": 100, "agreed": 90, "samples": [sample]},
    }]}  # fmt: skip


def test_a_rollout_starts_and_shows_its_step_weights_and_counts(client: TestClient) -> None:
    r = start(client, steps=[5, 25, 100], step_s=60, shadow=20, min_requests=10)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["state"], body["step"], body["weight"], body["shadow"]) == (
        "running", 0, 0.05, 0.2)  # fmt: skip
    assert body["steps"] == [5, 25, 100] and body["published"] is True
    sent = client.post("/serving/rollout-reports", json=report(body["id"], 7, 93),
                       headers=SERVING)  # fmt: skip
    assert sent.status_code == 200 and sent.json() == {"recorded": 1, "unknown": 0}
    status = client.get("/admin/models/m/rollout", headers=ADMIN).json()
    assert status["window"]["candidate"]["requests"] == 7
    assert status["totals"]["shadow"]["agreed"] == 90 and status["replicas_reporting"] == 1
    assert status["disagreements"][0]["candidate"] == '"b"'
    assert {g["gate"]: g["outcome"] for g in status["gates_now"]} == {
        "errors": "passed",
        "latency": "not-judged",
        "agreement": "failed",
    }  # 90 of 100 agreed
    events = client.get("/admin/models/m/events", headers=ADMIN).json()["events"]
    assert events[0]["kind"] == "rollout" and events[0]["actor"] == "admin"
    metrics = client.get("/metrics").text
    assert "sigserve_rollouts_started_total 1.0" in metrics
    assert 'sigserve_rollout_reports_total{result="recorded"} 1.0' in metrics


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"candidate": "3"}, 409, "candidate"),  # quarantined
        ({"candidate": "1"}, 409, "candidate"),  # the default
        ({"steps": [50, 25]}, 422, "steps"),
        ({"steps": [5, 150]}, 422, "steps"),
        ({"steps": [0, 100]}, 422, "steps"),  # a shadow step without a shadow
        ({"shadow": 120}, 422, "shadow"),
        ({"thresholds": {"min_agreement": 2}}, 422, "thresholds.min_agreement"),
    ],
)
def test_refusals_are_problems_naming_the_field(
    client: TestClient, body: dict[str, Any], status: int, field: str
) -> None:
    r = start(client, **body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    named = problem.get("field") or " ".join(e["field"] for e in problem.get("errors", []))
    assert field in named or field in problem["detail"]


def test_a_second_rollout_is_refused_until_the_first_is_aborted(client: TestClient) -> None:
    assert start(client).status_code == 201
    again = start(client)
    assert again.status_code == 409 and again.json()["field"] == "model"
    aborted = client.post("/admin/models/m/rollout/abort", headers=ADMIN)
    assert aborted.status_code == 200 and aborted.json()["state"] == "aborted"
    assert client.post("/admin/models/m/rollout/abort", headers=ADMIN).status_code == 409
    assert start(client).status_code == 201


def test_promote_by_hand_moves_the_default_at_once(client: TestClient) -> None:
    assert start(client).status_code == 201
    promoted = client.post("/admin/models/m/rollout/promote", headers=ADMIN)
    assert promoted.status_code == 200 and promoted.json()["state"] == "promoted"
    model = client.get("/admin/models/m", headers=ADMIN).json()
    assert model["default_version"] == "2"
    pins = [e for e in client.get("/admin/models/m/events", headers=ADMIN).json()["events"]
            if e["kind"] == "pin"]  # fmt: skip
    assert pins[0]["actor"] == "admin"


def test_promote_by_hand_promotes_a_rollout_the_stepper_moved_on_meanwhile(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert start(client, steps=[5, 50, 100]).status_code == 201
    rollouts = svc(client).rollouts
    latest = rollouts.latest

    def then_a_step(name: str) -> Any:
        read = latest(name)
        if read is not None and read.step == 0:  # the stepper takes a step right after
            assert rollouts.advance(read, Totals(), {"step": 0}, "rollout")
        return read

    monkeypatch.setattr(rollouts, "latest", then_a_step)
    promoted = client.post("/admin/models/m/rollout/promote", headers=ADMIN)
    assert promoted.status_code == 200 and promoted.json()["state"] == "promoted"
    assert client.get("/admin/models/m", headers=ADMIN).json()["default_version"] == "2"


def test_reports_need_the_serving_token_and_keep_to_a_budget(client: TestClient) -> None:
    rollout = start(client).json()["id"]
    assert client.post("/serving/rollout-reports", json=report(rollout, 1, 1),
                       headers=ADMIN).status_code == 401  # fmt: skip
    client.app.state.rollout_report_limits = ReportLimits(  # type: ignore[attr-defined]
        per_replica=(2, 1.0), clock=lambda: 0.0
    )
    codes = [client.post("/serving/rollout-reports", json=report(rollout, 1, 1),
                         headers=SERVING).status_code for _ in range(3)]  # fmt: skip
    assert codes == [200, 200, 429]
    other = client.post("/serving/rollout-reports", json=report(rollout, 1, 1, replica="r2"),
                        headers=SERVING)  # fmt: skip
    assert other.status_code == 200  # a budget per replica id
    stale = client.post("/serving/rollout-reports", json=report("f" * 32, 1, 1, "r3"),
                        headers=SERVING)  # fmt: skip
    assert stale.json() == {"recorded": 0, "unknown": 1}


def test_a_tick_of_the_apps_stepper_takes_a_step(client: TestClient) -> None:
    rollout = start(client, steps=[50, 100], step_s=1, min_requests=0).json()["id"]
    client.post("/serving/rollout-reports", json=report(rollout, 10, 10), headers=SERVING)
    stepper = svc(client).rollout_stepper
    stepper.clock = lambda: datetime.now(UTC) + timedelta(seconds=2)  # past the hold time
    done = client.portal.call(stepper.tick)  # type: ignore[union-attr]
    assert done == ["m: step 1"]
    status = client.get("/admin/models/m/rollout", headers=ADMIN).json()
    assert (status["step"], status["weight"]) == (1, 1.0)


def test_a_report_past_its_bound_is_refused_before_it_is_read(client: TestClient) -> None:
    body = b" " * (MAX_BODY + 1)
    r = client.post("/serving/rollout-reports", content=body,
                    headers={**SERVING, "content-type": "application/json"})  # fmt: skip
    assert r.status_code == 413
    # The load-failure route keeps its own, smaller bound.
    assert client.post("/serving/load-failures", content=b" " * (64 * 1024),
                       headers=SERVING).status_code == 413  # fmt: skip


def test_steps_read_back_as_the_percentages_given(client: TestClient) -> None:
    body = start(client, steps=[7, 29, 100]).json()
    assert body["steps"] == [7, 29, 100] and body["weight"] == 0.07

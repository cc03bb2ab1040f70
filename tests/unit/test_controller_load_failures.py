"""A serving replica's report that it could not load a version's artifact: recorded on a real
store, the version quarantined with the cause until released, and the HTTP endpoint's refusals."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller import commands
from controller.app import create_app
from controller.database import make_engine, migrate
from controller.decisions import decide_all
from controller.environment import EnvironmentPolicy
from controller.exceptions import StaleReport
from controller.reconciler import Reconciler
from controller.report_limits import PER_REPLICA_BURST, PER_REPLICA_PER_MINUTE, ReportLimits
from controller.store import Store
from tests.unit.test_controller_audit_and_overrides import ENV, Registry, sig
from tests.unit.test_controller_http import _settings
from wire.routing_table import VersionState

SHARED = EnvironmentPolicy.SHARED

SERVING_TOKEN = "serving-token-0123456789"


def digest(version: str) -> str:
    return version.ljust(64, "0")  # what the fake registry gives each version's MLmodel


def failure(version: str = "2", **changes: str) -> dict[str, str]:
    return {
        "kind": "load-failed",
        "cause": "UnpicklingError: pickle data was truncated",
        "mlmodel_digest": digest(version),
        "replica": "r1",
        "at": "2026-11-28T22:00:00+00:00",
        **changes,
    }


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    s = Store(engine)
    registry = Registry({"1": sig("prompt"), "2": sig("prompt"), "3": sig("prompt")})
    # Shared: a load failure quarantines at once (under isolate, the default, it sends the
    # version to an environment of its own: tests/unit/test_controller_own_environments.py).
    Reconciler(s, registry, ENV, write_back=False, default_environment_policy=SHARED
               ).reconcile("m", "resync")  # fmt: skip
    return s


def states(store: Store) -> dict[str, str]:
    record = store.load_model("m")
    assert record is not None
    return {k: v.state.value for k, v in record.versions.items()}


def test_a_reported_load_failure_quarantines_that_version_alone_with_the_cause(
    store: Store,
) -> None:
    assert states(store) == {"1": "live", "2": "live", "3": "live"}
    record = commands.record_load_failure(store, "m", "2", failure(), ENV)
    v2 = record.versions["2"]
    assert v2.state is VersionState.QUARANTINED
    assert v2.reasons[0].startswith("serving could not load its artifact (replica r1 at 2026-")
    assert "UnpicklingError: pickle data was truncated" in v2.reasons[0]
    assert states(store) == {"1": "live", "2": "quarantined", "3": "live"}
    # Serving hears of it through the table, with the reason a client will read in the 409.
    entry = store.publish().models["m"].versions["2"]
    assert entry.state is VersionState.QUARANTINED and "truncated" in entry.reasons[0]
    kinds = [(e.kind, e.version, e.actor) for e in store.events("m", limit=10)]
    assert ("load", "2", "serving:r1") in kinds and ("decision", "2", "serving:r1") in kinds


def test_the_same_report_again_changes_nothing(store: Store) -> None:
    commands.record_load_failure(store, "m", "2", failure(), ENV)
    events = len(store.events("m", limit=100))
    again = commands.record_load_failure(
        store, "m", "2", failure(replica="r2", at="2026-11-28T22:00:09+00:00"), ENV
    )
    assert again.versions["2"].load_failure == failure()  # the first report is kept
    assert len(store.events("m", limit=100)) == events


def test_a_report_about_another_artifact_is_stale_and_changes_nothing(store: Store) -> None:
    with pytest.raises(StaleReport, match="no longer the artifact reported"):
        commands.record_load_failure(store, "m", "2", failure(mlmodel_digest="f" * 64), ENV)
    assert states(store)["2"] == "live"


def test_a_release_clears_the_failure_and_a_new_report_quarantines_again(store: Store) -> None:
    commands.record_load_failure(store, "m", "2", failure(), ENV)
    released = commands.release(store, "m", "2", "the serving image has the package now", ENV)
    assert released.versions["2"].state is VersionState.LIVE
    assert released.versions["2"].load_failure is None
    assert released.versions["2"].override is None  # the gate decides again, not a person
    again = commands.record_load_failure(store, "m", "2", failure(), ENV)
    assert again.versions["2"].state is VersionState.QUARANTINED


def test_a_failure_about_an_older_artifact_does_not_hold_against_a_new_one(store: Store) -> None:
    record = commands.record_load_failure(store, "m", "2", failure(), ENV)
    # The version's artifact was read again and is another one (its MLmodel digest changed).
    versions = dict(record.versions)
    versions["2"] = replace(versions["2"], mlmodel_digest="e" * 64, decided_against=None)
    redecided = decide_all(replace(record, versions=versions), datetime.now(UTC), ENV)
    assert redecided.versions["2"].state is VersionState.LIVE


def test_a_report_about_the_live_default_is_recorded_and_it_stays_live(store: Store) -> None:
    # The serving token is readable by model code (docs/security.md, "One replica is one trust
    # domain"): a report alone must not take a model's whole endpoint out.
    record = commands.record_load_failure(store, "m", "1", failure("1"), ENV)
    v1 = record.versions["1"]
    assert (record.default_version, v1.state, v1.reasons) == ("1", VersionState.LIVE, [])
    assert v1.load_failure == {**failure("1"), "quarantines": False}
    assert v1.warnings[0].startswith("serving could not load its artifact (replica r1 at 2026-")
    assert "truncated" in v1.warnings[0] and "stays live" in v1.warnings[0]
    entry = store.publish().models["m"].versions["1"]
    assert entry.state is VersionState.LIVE and entry.warnings == v1.warnings
    # Kept and audited as a load event, and no decision changed.
    kinds = [(e.kind, e.version, e.actor) for e in store.events("m", limit=10)]
    assert ("load", "1", "serving:r1") in kinds
    assert ("decision", "1", "serving:r1") not in kinds
    events = len(store.events("m", limit=100))
    again = commands.record_load_failure(store, "m", "1", failure("1", replica="r2"), ENV)
    assert again.versions["1"] == v1 and len(store.events("m", limit=100)) == events


def test_the_operator_takes_a_reported_default_out_by_a_pin_or_by_hand(store: Store) -> None:
    commands.record_load_failure(store, "m", "1", failure("1"), ENV)
    # Pinned away, it stays live with its warning; a replica's next report about it (it is
    # not the default now) quarantines it as any other version's would.
    pinned = commands.pin_default(store, "m", "2", ENV).model
    assert (pinned.default_version, pinned.versions["1"].state) == ("2", VersionState.LIVE)
    later = failure("1", replica="r2", at="2026-11-28T22:05:00+00:00")
    record = commands.record_load_failure(store, "m", "1", later, ENV)
    assert record.versions["1"].state is VersionState.QUARANTINED
    assert record.versions["1"].load_failure == later
    assert "replica r2" in record.versions["1"].reasons[0]
    # A default quarantined by hand answers the 409, its report still shown.
    commands.record_load_failure(store, "m", "2", failure("2"), ENV)
    taken = commands.quarantine(store, "m", "2", "v2 cannot load on the new image", ENV)
    assert taken.versions["2"].state is VersionState.QUARANTINED
    assert taken.versions["2"].reasons[0].startswith("quarantined by hand")
    # Released twice (the hand quarantine, then the report): serving tries it again.
    commands.release(store, "m", "2", "the image was fixed", ENV)
    back = commands.release(store, "m", "2", "the image was fixed", ENV)
    assert (back.versions["2"].state, back.versions["2"].load_failure) == (VersionState.LIVE, None)
    assert back.versions["2"].warnings == []


@pytest.fixture()
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = _settings(tmp_path, serving_token=SERVING_TOKEN,
                         default_environment_policy="shared")
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    s = Store(engine)
    Reconciler(s, Registry({"1": sig("p"), "2": sig("p")}), ENV, write_back=False,
               default_environment_policy=SHARED).reconcile("m", "resync")
    s.publish()
    engine.dispose()
    with TestClient(create_app(settings)) as c:
        yield c


def report(**changes: Any) -> dict[str, Any]:
    body = {"model": "m", "version": "2", **failure()}
    body.pop("at")
    return {**body, **changes}


AUTH = {"Authorization": f"Bearer {SERVING_TOKEN}"}


def test_a_report_is_recorded_published_and_counted(client: TestClient) -> None:
    r = client.post("/serving/load-failures", json=report(), headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["recorded"], body["state"], body["published"]) == (True, "quarantined", True)
    assert "truncated" in body["reasons"][0]
    table = client.get("/routing-table", headers=AUTH).json()
    assert table["models"]["m"]["versions"]["2"]["state"] == "quarantined"
    again = client.post("/serving/load-failures", json=report(replica="r9"), headers=AUTH)
    assert again.status_code == 200 and again.json()["recorded"] is False
    metrics = client.get("/metrics").text
    assert 'sigserve_load_failure_reports_total{result="recorded"} 1.0' in metrics
    assert 'sigserve_load_failure_reports_total{result="repeated"} 1.0' in metrics
    admin = {"Authorization": "Bearer admin-token-0123456789"}
    detail = client.get("/admin/models/m", headers=admin).json()
    v2 = next(v for v in detail["versions"] if v["version"] == "2")
    assert v2["load_failure"]["replica"] == "r1"


def test_a_report_about_the_live_default_leaves_it_live_and_is_counted_apart(
    client: TestClient,
) -> None:
    r = client.post("/serving/load-failures",
                    json=report(version="1", mlmodel_digest=digest("1")), headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["recorded"], body["state"], body["reasons"]) == (True, "live", [])
    assert "stays live" in body["warnings"][0] and body["load_failure"]["quarantines"] is False
    table = client.get("/routing-table", headers=AUTH).json()["models"]["m"]
    assert table["default_version"] == "1" and table["versions"]["1"]["state"] == "live"
    metrics = client.get("/metrics").text
    assert 'sigserve_load_failure_reports_total{result="default_live"} 1.0' in metrics
    assert 'sigserve_load_failure_reports_total{result="recorded"} 0.0' in metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reports_past_a_replicas_budget_are_429_until_it_refills(client: TestClient) -> None:
    clock = Clock()
    client.app.state.report_limits = ReportLimits(clock=clock)  # type: ignore[attr-defined]
    answers = [
        client.post("/serving/load-failures", json=report(replica="forged"), headers=AUTH)
        for _ in range(PER_REPLICA_BURST + 5)
    ]
    assert [a.status_code for a in answers] == [200] * PER_REPLICA_BURST + [429] * 5
    refused = answers[-1]
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"] == "urn:sigserve:problem:too-many-reports"
    assert "forged" in refused.json()["detail"]
    wait = int(refused.headers["retry-after"])
    assert 1 <= wait <= 60 / PER_REPLICA_PER_MINUTE + 1
    # Proofs spend the same budget; another replica has its own.
    proof = {**report(replica="forged"), "outcome": "passed", "exercised": True}
    for name in ("kind", "cause"):
        proof.pop(name)
    assert client.post("/serving/proofs", json=proof, headers=AUTH).status_code == 429
    other = client.post("/serving/load-failures", json=report(replica="r2"), headers=AUTH)
    assert other.status_code == 200
    clock.now += wait
    again = client.post("/serving/load-failures", json=report(replica="forged"), headers=AUTH)
    assert again.status_code == 200
    metrics = client.get("/metrics").text
    assert 'sigserve_load_failure_reports_total{result="limited"} 6.0' in metrics


def test_reports_from_every_replica_together_are_bounded(client: TestClient) -> None:
    clock = Clock()
    limits = ReportLimits(clock=clock, per_replica=(2, 1.0), overall=(5, 60.0))
    client.app.state.report_limits = limits  # type: ignore[attr-defined]
    statuses = [
        client.post("/serving/load-failures", json=report(replica=f"r{i}"), headers=AUTH)
        .status_code
        for i in range(8)
    ]
    assert statuses == [200] * 5 + [429] * 3
    clock.now += 1.0  # one report a second in all
    assert client.post("/serving/load-failures", json=report(replica="r99"),
                       headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer admin-token-0123456789"}],
    ids=["none", "wrong", "admin-token"],
)
def test_a_report_needs_the_serving_token(client: TestClient, headers: dict[str, str]) -> None:
    r = client.post("/serving/load-failures", json=report(), headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    table = client.get("/routing-table", headers=AUTH).json()
    assert table["models"]["m"]["versions"]["2"]["state"] == "live"


def test_without_a_serving_token_configured_every_report_is_refused(
    tmp_path: Path,
) -> None:
    with TestClient(create_app(_settings(tmp_path))) as c:
        r = c.post("/serving/load-failures", json=report(), headers=AUTH)
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("changes", "status", "field"),
    [
        ({"mlmodel_digest": "not-a-digest"}, 422, "mlmodel_digest"),
        ({"kind": "it-broke"}, 422, "kind"),
        ({"version": "../2"}, 422, "version"),
        ({"cause": ""}, 422, "cause"),
        ({"replica": "r 1; drop"}, 422, "replica"),
        ({"extra": 1}, 422, "extra"),
    ],
)
def test_a_malformed_report_is_422_naming_the_field(
    client: TestClient, changes: dict[str, Any], status: int, field: str
) -> None:
    r = client.post("/serving/load-failures", json=report(**changes), headers=AUTH)
    assert r.status_code == status
    assert r.json()["errors"][0]["field"] == field


def test_unknown_versions_are_404_and_other_artifacts_409(client: TestClient) -> None:
    r = client.post("/serving/load-failures", json=report(version="7"), headers=AUTH)
    assert r.status_code == 404 and "no version '7'" in r.json()["detail"]
    r = client.post("/serving/load-failures", json=report(model="nope"), headers=AUTH)
    assert r.status_code == 404
    r = client.post("/serving/load-failures", json=report(mlmodel_digest="a" * 64), headers=AUTH)
    assert r.status_code == 409 and r.json()["title"] == "Stale report"


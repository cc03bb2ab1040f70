"""The proof before the first request, as the controller decides on it (issue 17): a version that
passes every check waits, pending, for a serving replica's proof; the report decides it, on a
real store; the endpoint takes reports with the serving token. No serving here: the reports are
what a replica would send (``serving.proofs``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from controller import commands
from controller.app import create_app
from controller.database import make_engine, migrate
from controller.decisions import decide_all
from controller.environment import EnvironmentPolicy
from controller.exceptions import InvalidRequest, StaleReport
from controller.proofs import (
    BEFORE_PROOFS,
    BEING_PROVEN,
    NOT_EXERCISED,
    ProofPolicy,
    ProvingEnvironment,
)
from controller.reconciler import Reconciler
from controller.records import ModelRecord
from controller.registry_sync import PROOF_TAG, proof_from_tags
from controller.store import Store
from controller.table_builder import build_table
from tests.unit.test_controller_audit_and_overrides import ENV as PLAIN
from tests.unit.test_controller_audit_and_overrides import Registry, sig
from tests.unit.test_controller_http import _settings
from wire.routing_table import VersionState

PROVING = ProvingEnvironment(PLAIN.python_version, PLAIN.distributions)
SHARED = EnvironmentPolicy.SHARED
SERVING_TOKEN = "serving-token-0123456789"
AUTH = {"Authorization": f"Bearer {SERVING_TOKEN}"}


def digest(version: str) -> str:
    return version.ljust(64, "0")  # what the fake registry gives each version's MLmodel


def proof(version: str = "2", **changes: Any) -> dict[str, Any]:
    return {"outcome": "passed", "exercised": True, "mlmodel_digest": digest(version),
            "replica": "r1", "at": "2026-12-05T01:00:00+00:00", **changes}  # fmt: skip


def failed(version: str = "2", **changes: Any) -> dict[str, Any]:
    cause = "ValueError: this model was never fitted"
    return proof(version, outcome="failed", cause=cause, **changes)


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    s = Store(engine)
    registry = Registry({"1": sig("prompt"), "2": sig("prompt"), "3": sig("text")})
    # Shared: a failed proof quarantines at once (under isolate, the default, it sends the
    # version to an environment of its own: tests/unit/test_controller_own_environments.py).
    Reconciler(s, registry, PROVING, write_back=False, default_environment_policy=SHARED
               ).reconcile("m", "resync")  # fmt: skip
    return s


def states(store: Store) -> dict[str, str]:
    record = store.load_model("m")
    assert record is not None
    return {k: v.state.value for k, v in record.versions.items()}


def test_a_version_that_passes_the_checks_waits_pending_for_its_proof(store: Store) -> None:
    # 3 breaks the contract: quarantined as before, and never proven.
    assert states(store) == {"1": "pending", "2": "pending", "3": "quarantined"}
    record = store.load_model("m")
    assert record is not None
    assert record.versions["2"].reasons == [BEING_PROVEN]
    # The first version is the default and sets the contract while it is proven: its clients
    # get 503 (pending), never 404 (no default).
    assert (record.default_version, record.contract) == ("1", sig("prompt"))
    table = store.publish()
    entries = table.models["m"].versions
    assert [v for v, e in entries.items() if e.awaiting_proof] == ["1", "2"]
    assert entries["2"].source == "models:/m-2" and entries["2"].mlmodel_digest == digest("2")


def test_a_passed_proof_makes_the_version_live_and_a_failed_one_quarantines_with_the_cause(
    store: Store,
) -> None:
    live = commands.record_proof(store, "m", "2", proof(), PROVING)
    assert live.versions["2"].state is VersionState.LIVE
    assert live.versions["2"].warnings == []
    quarantined = commands.record_proof(store, "m", "1", failed("1"), PROVING)
    v1 = quarantined.versions["1"]
    assert v1.state is VersionState.QUARANTINED
    assert v1.reasons == [
        "failed its proof on serving (replica r1 at 2026-12-05T01:00:00+00:00): ValueError: "
        "this model was never fitted; release it to try again"
    ]
    assert store.publish().models["m"].versions["1"].awaiting_proof is False


def test_a_version_without_an_example_is_live_with_the_not_exercised_warning(
    store: Store,
) -> None:
    record = commands.record_proof(store, "m", "2", proof(exercised=False), PROVING)
    assert record.versions["2"].state is VersionState.LIVE
    assert record.versions["2"].warnings == [NOT_EXERCISED]


def test_the_first_proof_of_an_artifact_is_kept_and_another_artifacts_is_stale(
    store: Store,
) -> None:
    commands.record_proof(store, "m", "2", proof(), PROVING)
    events = len(store.events("m", limit=100))
    again = commands.record_proof(store, "m", "2", failed(replica="r2"), PROVING)
    assert again.versions["2"].proof == proof()
    assert again.versions["2"].state is VersionState.LIVE
    assert len(store.events("m", limit=100)) == events
    with pytest.raises(StaleReport, match="no longer the artifact proven"):
        commands.record_proof(store, "m", "1", proof("1", mlmodel_digest="f" * 64), PROVING)
    assert states(store)["1"] == "pending"


def test_a_proof_is_remembered_per_artifact_and_a_new_artifact_is_proven_again(
    store: Store,
) -> None:
    record = commands.record_proof(store, "m", "2", proof(), PROVING)
    # Decided again (a restart, a resync, another environment): the proof still holds.
    again = decide_all(replace(record, versions={
        k: replace(v, decided_against=None) for k, v in record.versions.items()
    }), datetime.now(UTC), PROVING)  # fmt: skip
    assert again.versions["2"].state is VersionState.LIVE
    # The version's artifact was read again and is another one: proven again.
    versions = dict(record.versions)
    versions["2"] = replace(versions["2"], mlmodel_digest="e" * 64, decided_against=None)
    redecided = decide_all(replace(record, versions=versions), datetime.now(UTC), PROVING)
    assert redecided.versions["2"].state is VersionState.PENDING


def test_a_pending_version_is_not_decided_again_at_every_pass(store: Store) -> None:
    record = store.load_model("m")
    assert record is not None
    later = decide_all(record, datetime(2030, 1, 1, tzinfo=UTC), PROVING)
    assert later.versions["2"] == record.versions["2"]  # decided_at too


def test_a_version_being_proven_cannot_be_pinned(store: Store) -> None:
    commands.record_proof(store, "m", "1", proof("1"), PROVING)
    with pytest.raises(InvalidRequest, match="version 2 is being proven"):
        commands.pin_default(store, "m", "2", PROVING)
    assert store.load_model("m").default_version == "1"  # type: ignore[union-attr]
    commands.record_proof(store, "m", "2", proof(), PROVING)
    assert commands.pin_default(store, "m", "2", PROVING).model.default_version == "2"


def test_a_forced_pin_of_a_version_never_proven_makes_it_the_default_while_it_is_proven(
    store: Store,
) -> None:
    # 3 breaks the contract, so it was never proven: only a pin that makes its signature the
    # contract lets it be, and it is taken (refusing it would leave it unprovable for good).
    pinned = commands.pin_default(store, "m", "3", PROVING, force=True).model
    v3 = pinned.versions["3"]
    assert (pinned.default_version, pinned.contract) == ("3", sig("text"))
    assert (v3.state, v3.reasons) == (VersionState.PENDING, [BEING_PROVEN])
    assert store.publish().models["m"].versions["3"].awaiting_proof
    proven = commands.record_proof(store, "m", "3", proof("3"), PROVING)
    assert proven.versions["3"].state is VersionState.LIVE


def test_a_release_of_a_failed_proof_proves_it_again(store: Store) -> None:
    commands.record_proof(store, "m", "2", failed(), PROVING)
    released = commands.release(store, "m", "2", "the example was fixed upstream", PROVING)
    v2 = released.versions["2"]
    assert (v2.state, v2.reasons, v2.proof, v2.override) == (
        VersionState.PENDING, [BEING_PROVEN], None, None
    )
    # The next replica's report decides it.
    assert commands.record_proof(store, "m", "2", proof(), PROVING).versions["2"].state is (
        VersionState.LIVE
    )


def test_a_failed_proof_about_the_live_default_is_recorded_and_it_stays_live(
    tmp_path: Path,
) -> None:
    # A replica proves only versions its table marks awaiting their proof, never a live one;
    # but a live default can lack a proof (decided while proofs were off for it, as here), and
    # the serving token can send any report (docs/security.md, "One replica is one trust
    # domain"). A failed proof of it is kept as a warning, like a load failure of it.
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    s = Store(engine)
    registry = Registry({"1": sig("prompt"), "2": sig("prompt")})
    Reconciler(s, registry, PLAIN, write_back=False, default_environment_policy=SHARED
               ).reconcile("m", "resync")  # fmt: skip
    assert states(s) == {"1": "live", "2": "live"}
    record = commands.record_proof(s, "m", "1", failed("1"), PROVING)
    v1 = record.versions["1"]
    assert (record.default_version, v1.state, v1.reasons) == ("1", VersionState.LIVE, [])
    assert v1.proof == {**failed("1"), "quarantines": False}
    assert v1.warnings[0].startswith("failed its proof on serving (replica r1 at 2026-12-05")
    assert "stays live" in v1.warnings[0]
    # Of any other version, as before: quarantined.
    two = commands.record_proof(s, "m", "2", failed("2"), PROVING).versions["2"]
    assert two.state is VersionState.QUARANTINED
    engine.dispose()


@pytest.mark.parametrize(
    ("env", "tag", "state"),
    [
        (PROVING, None, "pending"),
        (PROVING, "off", "live"),
        (ProvingEnvironment("3.11.9", PLAIN.distributions, ProofPolicy.OFF), None, "live"),
        (ProvingEnvironment("3.11.9", PLAIN.distributions, ProofPolicy.OFF), "on", "pending"),
        # No replica proves anything where decisions are made without serving.
        (PLAIN, None, "live"),
    ],
    ids=["default-on", "tag-off", "default-off", "tag-on-default-off", "plain"],
)
def test_the_tag_wins_over_the_controllers_default(
    env: ProvingEnvironment, tag: str | None, state: str
) -> None:
    seen = Registry({"1": sig("prompt")})
    record = ModelRecord(name="m", policy="backward", proof_policy=tag)
    from controller.reconciler import merge_observed

    merged = merge_observed(record, seen.versions("m"), {"1": seen.artifact("m", "1")}, {})
    decided = decide_all(merged, datetime.now(UTC), env)
    assert decided.versions["1"].state.value == state


def test_the_proof_tag_is_read_and_an_invalid_value_is_ignored() -> None:
    record = ModelRecord(name="m", policy="backward")
    assert proof_from_tags(record, {PROOF_TAG: "off"}).proof_policy == "off"
    assert proof_from_tags(record, {PROOF_TAG: "sometimes"}).proof_policy is None
    tagged = replace(record, proof_policy="off")
    assert proof_from_tags(tagged, {}).proof_policy is None  # the tag removed: the default
    # Registry controls off: off would loosen the gate, so the tag is not taken.
    assert proof_from_tags(record, {PROOF_TAG: "off"}, controls=False).proof_policy is None


def test_versions_live_before_proofs_stay_live_after_the_upgrade(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/old.db")
    migrate(engine, "0012")
    when = datetime(2026, 12, 1, tzinfo=UTC)
    models = sa.table("registered_models", sa.column("name"), sa.column("default_version"),
                      sa.column("contract", sa.JSON), sa.column("policy"),
                      sa.column("created_at", sa.DateTime(timezone=True)),
                      sa.column("updated_at", sa.DateTime(timezone=True)))
    versions = sa.table("model_versions", sa.column("model_name"), sa.column("version"),
                        sa.column("number"), sa.column("state"), sa.column("reasons", sa.JSON),
                        sa.column("signature", sa.JSON), sa.column("signature_read"),
                        sa.column("mlmodel_digest"), sa.column("artifact_uri"),
                        sa.column("warnings", sa.JSON))
    row = {"model_name": "m", "reasons": [], "signature": sig("prompt"), "signature_read": True,
           "warnings": []}
    with engine.begin() as c:
        c.execute(models.insert().values(name="m", default_version="1", contract=sig("prompt"),
                                         policy="backward", created_at=when, updated_at=when))
        c.execute(versions.insert(), [
            {**row, "version": "1", "number": 1, "state": "live", "mlmodel_digest": digest("1"),
             "artifact_uri": "models:/m-1"},
            {**row, "version": "2", "number": 2, "state": "pending", "mlmodel_digest": None,
             "artifact_uri": None},
        ])
    migrate(engine)
    record = Store(engine).load_model("m")
    assert record is not None
    assert record.versions["1"].proof == {
        "outcome": "before-proofs", "exercised": False, "mlmodel_digest": digest("1")
    }
    assert record.versions["2"].proof is None
    decided = decide_all(record, datetime.now(UTC), PROVING)
    assert decided.versions["1"].state is VersionState.LIVE
    assert decided.versions["1"].warnings == [BEFORE_PROOFS]
    assert build_table([decided], 1, "e").models["m"].versions["1"].awaiting_proof is False
    engine.dispose()


@pytest.fixture()
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = _settings(tmp_path, serving_token=SERVING_TOKEN, default_proof="on",
                         default_environment_policy="shared")
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    s = Store(engine)
    registry = Registry({"1": sig("p"), "2": sig("p")})
    Reconciler(s, registry, settings.serving_environment(), write_back=False,
               default_environment_policy=SHARED).reconcile("m")
    s.publish()
    engine.dispose()
    with TestClient(create_app(settings)) as c:
        yield c


def report(**changes: Any) -> dict[str, Any]:
    body = {"model": "m", "version": "2", **proof()}
    body.pop("at")
    return {**body, **changes}


def test_a_proof_report_decides_the_version_and_publishes(client: TestClient) -> None:
    table = client.get("/routing-table", headers=AUTH).json()
    assert table["models"]["m"]["versions"]["2"]["state"] == "pending"
    assert table["models"]["m"]["versions"]["2"]["awaiting_proof"] is True
    r = client.post("/serving/proofs", json=report(), headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["recorded"], body["state"], body["published"]) == (True, "live", True)
    table = client.get("/routing-table", headers=AUTH).json()
    assert table["models"]["m"]["versions"]["2"]["state"] == "live"
    again = client.post("/serving/proofs", json=report(replica="r9"), headers=AUTH)
    assert again.status_code == 200 and again.json()["recorded"] is False
    cause = "ValueError: never fitted"
    no = client.post("/serving/proofs", json=report(version="1", mlmodel_digest=digest("1"),
                                                    outcome="failed", cause=cause), headers=AUTH)
    assert no.json()["state"] == "quarantined" and cause in no.json()["reasons"][0]


def test_the_admin_api_shows_a_versions_proof(client: TestClient) -> None:
    admin = {"Authorization": "Bearer admin-token-0123456789"}
    before = client.get("/admin/models/m", headers=admin).json()
    assert [v["proof"] for v in before["versions"]] == [None, None]
    cause = "ValueError: never fitted"
    client.post("/serving/proofs", json=report(outcome="failed", cause=cause), headers=AUTH)
    after = client.get("/admin/models/m", headers=admin).json()
    shown = after["versions"][1]["proof"]
    assert (shown["outcome"], shown["cause"], shown["replica"]) == ("failed", cause, "r1")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer admin-token-0123456789"}],
    ids=["none", "admin-token"],
)
def test_a_proof_report_needs_the_serving_token(
    client: TestClient, headers: dict[str, str]
) -> None:
    r = client.post("/serving/proofs", json=report(), headers=headers)
    assert r.status_code == 401
    table = client.get("/routing-table", headers=AUTH).json()
    assert table["models"]["m"]["versions"]["2"]["state"] == "pending"


@pytest.mark.parametrize(
    ("changes", "status", "field"),
    [
        ({"outcome": "failed"}, 422, "cause"),  # a failure names its cause
        ({"outcome": "maybe"}, 422, "outcome"),
        ({"mlmodel_digest": "f" * 64}, 409, None),  # another artifact: stale
        ({"model": "nobody"}, 404, None),
        ({"extra": 1}, 422, "extra"),
    ],
)
def test_a_bad_proof_report_is_refused_as_problem_json(
    client: TestClient, changes: dict[str, Any], status: int, field: str | None
) -> None:
    r = client.post("/serving/proofs", json=report(**changes), headers=AUTH)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    if field is not None:
        assert field in r.text

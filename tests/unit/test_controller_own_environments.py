"""Environments of their own, as the controller decides them (issue 17): under ``isolate`` a
version that needs a package the serving environment lacks, or that failed in the shared
environment, is given an environment of its own in the routing table and proven there; reports
count only for the environment the version is assigned. On a real store; the reports are what a
replica would send (``serving.proofs``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from packaging.requirements import Requirement

from controller import commands
from controller.app import create_app
from controller.artifacts import ArtifactFacts
from controller.database import make_engine, migrate
from controller.environment import (
    ArtifactEnvironment,
    EnvironmentPolicy,
    Mismatch,
    ServingEnvironment,
    check_environment,
)
from controller.own_environments import assign, environment_of, make_spec, where_served
from controller.proofs import BEING_PROVEN, ProvingEnvironment, awaits_proof
from controller.reconciler import Reconciler, merge_observed
from controller.registry import ObservedModel, ObservedVersion
from controller.settings import ControllerSettings
from controller.store import Store
from controller.table_builder import build_table
from tests.unit.test_controller_audit_and_overrides import sig
from tests.unit.test_controller_http import _settings
from wire.routing_table import EnvironmentSpec, VersionState

PROVING = ProvingEnvironment(
    "3.11.9",
    {"mlflow-skinny": "3.17.2", "pandas": "3.1.1", "numpy": "2.4.6", "scikit-learn": "1.6.1",
     "pyarrow": "22.0.0"},
)  # fmt: skip
SERVING_TOKEN = "serving-token-0123456789"
AUTH = {"Authorization": f"Bearer {SERVING_TOKEN}"}
# What each version was logged with: 1 needs nothing new, 2 and 3 a package serving lacks.
REQUIREMENTS = {
    "1": ["mlflow==3.17.2", "scikit-learn==1.5.0"],
    "2": ["mlflow==3.17.2", "Tiny_Pkg==0.3.1"],
    "3": ["tiny-pkg==0.3.1", "mlflow==3.17.2"],
}


def digest(version: str) -> str:
    return version.ljust(64, "0")


class Registry:
    def __init__(self, requirements: dict[str, list[str]]) -> None:
        self.requirements = requirements

    def model(self, name: str) -> ObservedModel:
        return ObservedModel(1, {}, {})

    def versions(self, name: str) -> list[ObservedVersion]:
        return [ObservedVersion(v, "READY", f"models:/m-{v}") for v in self.requirements]

    def artifact(self, name: str, version: str) -> ArtifactFacts:
        env = ArtifactEnvironment(self.requirements[version], "3.11.9", True)
        return ArtifactFacts(f"models:/m-{version}", digest(version), sig("prompt"), env)


def report(version: str, outcome: str = "passed", **changes: Any) -> dict[str, Any]:
    found = {"outcome": outcome, "exercised": True, "mlmodel_digest": digest(version),
             "replica": "r1", "at": "2026-12-05T01:00:00+00:00", **changes}  # fmt: skip
    if outcome == "failed":
        found.setdefault("cause", "ValueError: this model was never fitted")
    return found


def make_store(tmp_path: Path, policy: EnvironmentPolicy = EnvironmentPolicy.ISOLATE) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    s = Store(engine)
    Reconciler(s, Registry(REQUIREMENTS), PROVING, write_back=False,
               default_environment_policy=policy).reconcile("m", "resync")  # fmt: skip
    return s


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


def version(store: Store, number: str) -> Any:
    record = store.load_model("m")
    assert record is not None
    return record.versions[number]


# The spec: what an environment of its own is built from, and its digest.


def verdict(*requirements: str) -> Any:
    artifact = ArtifactEnvironment(list(requirements), "3.11.9", False)
    return check_environment(artifact, PROVING, EnvironmentPolicy.ISOLATE)


FAILED = report("1", "failed")


def test_a_missing_package_gets_a_layered_environment_of_the_lines_it_pinned() -> None:
    spec = assign(verdict("mlflow==3.17.2", "Tiny_Pkg==0.3.1", "pandas==2.2.3"), PROVING, None)
    assert spec is not None
    assert (spec.kind, spec.requirements) == ("layered", ["tiny-pkg==0.3.1"])
    assert spec.reason == "needs Tiny_Pkg, which the serving environment lacks"
    # The same needs, spelled and ordered otherwise: one environment.
    same = assign(verdict("tiny-pkg==0.3.1", "mlflow==3.17.2"), PROVING, None)
    assert same is not None and same.digest == spec.digest
    other_python = ServingEnvironment("3.12.1", PROVING.distributions)
    moved = assign(verdict("tiny-pkg==0.3.1"), other_python, None)
    assert moved is not None and moved.digest != spec.digest
    # Nothing missing and nothing failed: the shared environment.
    assert assign(verdict("scikit-learn==1.5.0"), PROVING, None) is None


@pytest.mark.parametrize(
    ("requirements", "kind", "lines"),
    [
        # Another version of a package the serving stack does not import: laid over it.
        (["mlflow==3.17.2", "scikit-learn==1.5.0"], "layered", ["scikit-learn==1.5.0"]),
        # Another minor of pandas stays the serving environment's; the rest is layered.
        (["pandas==3.0.2", "scikit-learn==1.5.0"], "layered", ["scikit-learn==1.5.0"]),
        # Another major of MLflow or pandas (an MLflow 2 client's model): inherits nothing.
        (
            ["mlflow==2.22.0", "pandas==2.2.3", "scikit-learn==1.5.0"],
            "isolated",
            ["mlflow==2.22.0", "pandas==2.2.3", "scikit-learn==1.5.0"],
        ),
        # Another version of what Ray and Serve import cannot be layered under a replica.
        (
            ["pyarrow==18.0.0", "scikit-learn==1.5.0"],
            "isolated",
            ["pyarrow==18.0.0", "scikit-learn==1.5.0"],
        ),
        # A layer would add nothing: everything it pins is met or is the stack's own.
        (["pandas==3.0.2", "mlflow==3.17.2"], "isolated", ["mlflow==3.17.2", "pandas==3.0.2"]),
    ],
    ids=["layered", "minor-left-out", "another-major", "serving-stack", "nothing-to-add"],
)
def test_a_shared_failure_gets_layered_or_isolated_by_what_it_pins(
    requirements: list[str], kind: str, lines: list[str]
) -> None:
    spec = assign(verdict(*requirements), PROVING, FAILED)
    assert spec is not None
    assert (spec.kind, spec.requirements) == (kind, lines)
    assert spec.reason.startswith(
        "failed its proof in the shared serving environment (replica r1 at "
        "2026-12-05T01:00:00+00:00): ValueError: this model was never fitted"
    )
    if kind == "isolated":
        assert "; isolated: " in spec.reason


def test_the_digest_is_of_kind_lines_and_python_minor() -> None:
    one = make_spec("layered", [Requirement("a==1"), Requirement("B==2")], PROVING, "x")
    two = make_spec("layered", [Requirement("b==2"), Requirement("a==1")], PROVING, "y")
    assert one.digest == two.digest  # the reason is for a person, not part of the build
    assert make_spec("isolated", [Requirement("a==1"), Requirement("b==2")], PROVING,
                     "x").digest != one.digest  # fmt: skip
    assert Mismatch(Requirement("a==1"), "2", True).another_major


def test_a_shared_failure_of_a_version_whose_needs_are_all_met_is_its_own() -> None:
    # Built to the same pins, an environment would fail as the shared one did.
    assert assign(verdict("mlflow==3.17.2", "scikit-learn==1.6.1"), PROVING, FAILED) is None
    assert assign(verdict(), PROVING, FAILED) is None


# Deciding: a version that needs a package serving lacks.


def test_a_missing_package_is_pending_building_its_environment_not_quarantined(
    store: Store,
) -> None:
    v2, v3 = version(store, "2"), version(store, "3")
    assert v2.state is VersionState.PENDING
    assert v2.reasons == [
        "building its environment: needs Tiny_Pkg, which the serving environment lacks; it is "
        "proven there before its first request"
    ]
    # What the routing table gives it (table_builder: ``environment=environment_of(v)``).
    table = store.publish().models["m"].versions
    assert table["2"].awaiting_proof and table["3"].awaiting_proof
    two, three = environment_of(v2), environment_of(v3)
    assert two is not None and three is not None
    assert (two.kind, two.requirements) == ("layered", ["tiny-pkg==0.3.1"])
    # Same needs: the same environment, built once for both.
    assert three == two.model_copy(
        update={"reason": "needs tiny-pkg, which the serving environment lacks"}
    )
    # Version 1 needs nothing new: proven in the shared environment, as before.
    v1 = version(store, "1")
    assert environment_of(v1) is None and v1.reasons == [BEING_PROVEN]
    assert v3.own_environment["shared_failure"] is None


def test_its_proof_there_makes_it_live_and_a_shared_proof_of_it_is_stale(
    store: Store, tmp_path: Path
) -> None:
    spec = environment_of(version(store, "2"))
    assert spec is not None
    proven = commands.record_proof(store, "m", "2", report("2", environment_digest=spec.digest),
                                   PROVING)  # fmt: skip
    v2 = proven.versions["2"]
    assert v2.state is VersionState.LIVE
    assert v2.warnings[-1].startswith(f"served from an environment of its own (layered, "
                                      f"{spec.digest[:12]}): needs Tiny_Pkg")  # fmt: skip
    assert environment_of(v2) == spec
    assert not build_table([proven], 1, "e").models["m"].versions["2"].awaiting_proof


def published_controller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[ControllerSettings, EnvironmentSpec]:
    """Settings of a controller (proofs on) whose database decided and published model m, and
    the environment of its own version 2 was given."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = _settings(tmp_path, serving_token=SERVING_TOKEN, default_proof="on")
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    s = Store(engine)
    Reconciler(s, Registry(REQUIREMENTS), settings.serving_environment(), write_back=False
               ).reconcile("m", "resync")  # fmt: skip
    s.publish()
    spec = environment_of(version(s, "2"))
    assert spec is not None
    engine.dispose()
    return settings, spec


def test_a_report_from_the_shared_environment_about_a_version_with_its_own_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, spec = published_controller(tmp_path, monkeypatch)
    with TestClient(create_app(settings)) as c:
        body = {"model": "m", "version": "2", **report("2")}
        body.pop("at")
        stale = c.post("/serving/proofs", json=body, headers=AUTH)
        assert stale.status_code == 409, stale.text
        assert "proven and served in an environment of its own" in stale.json()["detail"]
        answer = c.get("/routing-table", params={"schema": 3}, headers=AUTH).json()
        table = answer["models"]["m"]["versions"]
        assert table["2"]["state"] == "pending"
        own = spec.digest
        proven = c.post("/serving/proofs", json={**body, "environment_digest": own},
                        headers=AUTH)  # fmt: skip
        assert proven.status_code == 200, proven.text
        assert (proven.json()["state"], proven.json()["proof"]["environment_digest"]) == (
            "live",
            own,
        )
        # And one made in an environment of its own about a version served in the shared one.
        body1 = {**body, "version": "1", "mlmodel_digest": digest("1"), "environment_digest": own}
        assert c.post("/serving/proofs", json=body1, headers=AUTH).status_code == 409


# Deciding: a version that failed in the shared environment.


def test_a_failed_shared_proof_moves_it_to_its_own_environment_then_both_causes(
    store: Store,
) -> None:
    moved = commands.record_proof(store, "m", "1", report("1", "failed"), PROVING).versions["1"]
    assert moved.state is VersionState.PENDING
    assert moved.reasons[0].startswith(
        "building its environment: failed its proof in the shared serving environment "
        "(replica r1 at 2026-12-05T01:00:00+00:00): ValueError: this model was never fitted"
    )
    assert awaits_proof(moved)
    spec = environment_of(moved)
    assert spec is not None
    assert (spec.kind, spec.requirements) == ("layered", ["scikit-learn==1.5.0"])
    # A second replica's shared report changes nothing; the shared cause is kept.
    again = commands.record_proof(store, "m", "1", report("1", replica="r2"), PROVING)
    assert again.versions["1"].state is VersionState.PENDING
    own = report("1", "failed", replica="r3", cause="ImportError: no module named sklearn.x",
                 environment_digest=spec.digest)  # fmt: skip
    v1 = commands.record_proof(store, "m", "1", own, PROVING).versions["1"]
    assert v1.state is VersionState.QUARANTINED
    assert v1.reasons == [
        "failed its proof in its own environment (replica r3 at 2026-12-05T01:00:00+00:00): "
        "ImportError: no module named sklearn.x; release it to try again",
        "before that, it failed its proof in the shared serving environment (replica r1 at "
        "2026-12-05T01:00:00+00:00): ValueError: this model was never fitted",
    ]
    # A release proves it again in its own environment, the shared cause still kept.
    released = commands.release(store, "m", "1", "fixed the index", PROVING).versions["1"]
    assert released.state is VersionState.PENDING and awaits_proof(released)
    assert environment_of(released) == spec
    ok = commands.record_proof(store, "m", "1", report("1", environment_digest=spec.digest),
                               PROVING)  # fmt: skip
    assert ok.versions["1"].state is VersionState.LIVE


def test_a_failed_proof_of_a_version_whose_needs_are_met_quarantines_with_the_cause(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/met.db")
    migrate(engine)
    s = Store(engine)
    Reconciler(s, Registry({"1": ["mlflow==3.17.2"]}), PROVING, write_back=False
               ).reconcile("m", "resync")  # fmt: skip
    v1 = commands.record_proof(s, "m", "1", report("1", "failed"), PROVING).versions["1"]
    assert (v1.state, v1.own_environment) == (VersionState.QUARANTINED, None)
    assert v1.reasons == [
        "failed its proof on serving (replica r1 at 2026-12-05T01:00:00+00:00): ValueError: "
        "this model was never fitted; release it to try again"
    ]


def test_a_load_failure_in_the_shared_environment_moves_it_too(store: Store) -> None:
    failure = {
        "kind": "load-failed",
        "cause": "ModuleNotFoundError: No module named 'x'",
        "mlmodel_digest": digest("1"),
        "replica": "r1",
        "at": "2026-12-05T01:00:00",
    }
    v1 = commands.record_load_failure(store, "m", "1", failure, PROVING).versions["1"]
    assert v1.state is VersionState.PENDING
    assert v1.reasons[0].startswith(
        "building its environment: could not be loaded in the shared serving environment"
    )
    # Another MLmodel downloaded is no environment's fault: quarantined as before.
    mismatch = {**failure, "kind": "artifact-mismatch"}
    v2 = commands.record_load_failure(store, "m", "2", {**mismatch, "mlmodel_digest":
                                                        digest("2")}, PROVING)  # fmt: skip
    assert v2.versions["2"].state is VersionState.QUARANTINED


def test_under_shared_a_missing_package_and_a_failed_proof_quarantine(tmp_path: Path) -> None:
    s = make_store(tmp_path, EnvironmentPolicy.SHARED)
    assert version(s, "2").state is VersionState.QUARANTINED
    assert "the environment policy 'shared'" in version(s, "2").reasons[0]
    v1 = commands.record_proof(s, "m", "1", report("1", "failed"), PROVING).versions["1"]
    assert v1.state is VersionState.QUARANTINED
    assert v1.own_environment is None
    assert s.publish().models["m"].versions["2"].environment is None


def test_a_policy_change_moves_versions_between_environments(store: Store) -> None:
    shared = commands.set_policies(store, "m", PROVING, environment=EnvironmentPolicy.SHARED)
    assert shared.versions["2"].state is VersionState.QUARANTINED
    assert shared.versions["2"].own_environment is None
    # The old name of isolate, as a tag or an admin call from before issue 17 says it.
    back = commands.set_policies(store, "m", PROVING, environment=EnvironmentPolicy("strict"))
    assert back.environment_policy == "isolate"
    assert back.versions["2"].state is VersionState.PENDING
    assert environment_of(back.versions["2"]) is not None
    off = commands.set_policies(store, "m", PROVING, environment=EnvironmentPolicy("warn"))
    assert off.environment_policy == "off"
    assert (off.versions["2"].reasons, off.versions["2"].own_environment) == ([BEING_PROVEN], None)


def test_the_migration_stores_the_old_policy_values_as_the_new_ones(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/old.db")
    migrate(engine, "0014")
    models = sa.table("registered_models", sa.column("name"), sa.column("policy"),
                      sa.column("environment_policy"), sa.column("created_at", sa.DateTime),
                      sa.column("updated_at", sa.DateTime))  # fmt: skip
    from datetime import datetime

    when = datetime(2026, 12, 1)
    with engine.begin() as connection:
        connection.execute(models.insert(), [
            {"name": n, "policy": "backward", "environment_policy": p, "created_at": when,
             "updated_at": when}
            for n, p in (("a", "strict"), ("b", "warn"), ("c", "off"))
        ])  # fmt: skip
    migrate(engine)
    s = Store(engine)
    stored = {n: s.load_model(n).environment_policy for n in "abc"}  # type: ignore[union-attr]
    assert stored == {"a": "isolate", "b": "off", "c": "off"}
    engine.dispose()


def test_the_admin_view_says_where_a_version_is_served(store: Store) -> None:
    assert where_served(version(store, "1")) == {"kind": "shared"}
    shown = where_served(version(store, "2"))
    assert (shown["kind"], shown["requirements"], shown["shared_failure"]) == (
        "layered",
        ["tiny-pkg==0.3.1"],
        None,
    )
    assert shown["reason"] == "needs Tiny_Pkg, which the serving environment lacks"
    moved = commands.record_proof(store, "m", "1", report("1", "failed"), PROVING)
    assert where_served(moved.versions["1"])["shared_failure"]["cause"] == (
        "ValueError: this model was never fitted"
    )


def test_an_artifact_that_can_no_longer_be_read_keeps_no_environment(store: Store) -> None:
    record = store.load_model("m")
    assert record is not None and record.versions["2"].own_environment is not None
    observed = [ObservedVersion(v, "READY", f"models:/m-{v}") for v in REQUIREMENTS]
    merged = merge_observed(record, observed, {}, {}, {"2": "its location is not allowed"})
    assert merged.versions["2"].state is VersionState.QUARANTINED
    assert environment_of(merged.versions["2"]) is None


def test_a_version_building_its_environment_is_not_decided_again_at_every_pass(
    store: Store,
) -> None:
    from datetime import UTC, datetime

    from controller.decisions import decide_all

    commands.record_proof(store, "m", "1", report("1", "failed"), PROVING)
    record = store.load_model("m")
    assert record is not None
    later = decide_all(record, datetime(2030, 1, 1, tzinfo=UTC), PROVING)
    assert later.versions == record.versions  # decided_at too: nothing to write

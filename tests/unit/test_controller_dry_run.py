"""The dry run (``POST /admin/models/{name}/check``) against a real MLflow registry with no
server: a sqlite store and a local artifact root under tmp, the one allowed artifact source.

The verdict must be the one the gate gives the same artifact once it is registered, and the
check must write nothing: not to the controller's database, not to the registry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from controller import dry_run
from controller.app import create_app
from controller.database import make_engine, migrate
from controller.dry_run_source import CandidateRegistry, LocalFiles
from controller.environment import ServingEnvironment
from controller.read_reasons import NOT_ALLOWED
from controller.reconciler import Reconciler
from controller.registry import Registry
from controller.settings import ControllerSettings
from controller.store import Store
from wire.routing_table import VersionState

NAME = "churn"
TOKEN = "admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MISSING = "definitely-not-installed-pkg==1.0"
pytestmark = pytest.mark.filterwarnings("ignore:.*input example:UserWarning")


class Score(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        # No type hints: the signature is given, and MLflow would warn about hints it cannot use.
        return model_input


def _signature(*inputs: str) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("double", n) for n in inputs]),
        outputs=Schema([ColSpec("double", "score")]),
    )


def _log(experiment: str, signature: ModelSignature, requirements: list[str]) -> str:
    """A logged model's runs:/ URI (explicit requirements: no inference subprocess)."""
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.pyfunc.log_model(name="model", python_model=Score(), signature=signature,
                                pip_requirements=requirements)  # fmt: skip
    return f"runs:/{run.info.run_id}/model"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One registered model (v1: inputs a, b) and runs not registered: compatible (the same
    signature), breaking (b renamed c), and one needing a package serving lacks."""
    tmp = tmp_path_factory.mktemp("dry_run")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        patch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        patch.chdir(tmp)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_REGISTRY_URI", uri)
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            artifacts = tmp / "artifacts"
            experiment = client.create_experiment("e", artifact_location=str(artifacts))
            first = _log(experiment, _signature("a", "b"), ["pandas"])
            mlflow.register_model(first, NAME)
            runs = {
                "compatible": _log(experiment, _signature("a", "b"), ["pandas"]),
                "breaking": _log(experiment, _signature("a", "c"), ["pandas"]),
                "missing_package": _log(experiment, _signature("a", "b"), [MISSING]),
            }
            yield {"uri": uri, "tmp": tmp, "client": client, "artifacts": artifacts,
                   "runs": runs}  # fmt: skip
        finally:
            mlflow.set_tracking_uri(previous)


def _settings(world: dict[str, Any], home: Path, **more: Any) -> ControllerSettings:
    return ControllerSettings(
        home=home, admin_token=TOKEN, mlflow_tracking_uri=world["uri"],
        artifact_sources=[str(world["artifacts"])], resync_interval_s=3600, **more,
    )  # fmt: skip


@pytest.fixture()
def gate(world: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A controller database holding what the gate decided of the registry as it is."""
    settings = _settings(world, tmp_path)
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    store = Store(engine)
    registry = Registry(world["uri"], artifact_sources=settings.artifact_sources)
    env = ServingEnvironment.current()
    reconciler = Reconciler(store, registry, env, write_back=False)
    reconciler.reconcile(NAME)
    return {"settings": settings, "engine": engine, "store": store, "registry": registry,
            "env": env, "reconciler": reconciler}  # fmt: skip


def _check(world: dict[str, Any], gate: dict[str, Any], name: str, source: str) -> dry_run.DryRun:
    reader = CandidateRegistry(world["uri"], artifact_sources=gate["settings"].artifact_sources)
    return dry_run.check(
        name, lambda: reader.candidate(name, source), store=gate["store"],
        registry=gate["registry"], settings=gate["settings"], env=gate["env"],
    )  # fmt: skip


def _database(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the controller's database."""
    meta = sa.MetaData()
    meta.reflect(engine)
    with engine.connect() as c:
        return {t.name: sorted(map(tuple, c.execute(sa.select(t))), key=repr)
                for t in meta.sorted_tables}  # fmt: skip


def _registry(client: MlflowClient) -> list[Any]:
    models = client.search_registered_models()
    versions = client.search_model_versions(f"name='{NAME}'")
    return [
        [(m.name, m.tags, m.aliases, m.last_updated_timestamp) for m in models],
        sorted((v.version, v.tags, v.source, v.last_updated_timestamp) for v in versions),
    ]


def test_a_breaking_artifact_gets_the_reasons_the_gate_gives_it_once_registered(
    world: dict[str, Any], gate: dict[str, Any]
) -> None:
    source = world["runs"]["breaking"]
    result = _check(world, gate, NAME, source)
    assert result.verdict is VersionState.QUARANTINED
    assert any("'b'" in r for r in result.reasons), result.reasons
    assert result.contract is not None and not result.first_version
    assert result.version == "2"

    # The same artifact registered: the gate's own decision, word for word.
    version = mlflow.register_model(source, NAME).version
    try:
        gate["reconciler"].reconcile(NAME)
        decided = gate["store"].load_model(NAME).versions[str(version)]
        assert decided.state is VersionState.QUARANTINED
        assert decided.reasons == result.reasons
        assert decided.warnings == result.warnings
    finally:
        world["client"].delete_model_version(NAME, str(version))


def test_a_compatible_artifact_would_be_live_and_says_the_proof_is_not_run(
    world: dict[str, Any], gate: dict[str, Any]
) -> None:
    result = _check(world, gate, NAME, world["runs"]["compatible"])
    assert result.verdict is VersionState.LIVE, result.reasons
    assert result.reasons == []
    assert dry_run.NO_PROOF in result.notes
    assert result.location is not None
    assert Path(result.location).is_relative_to(world["artifacts"])


def test_a_registered_version_its_alias_and_its_logged_model_read_the_same_artifact(
    world: dict[str, Any], gate: dict[str, Any]
) -> None:
    client = world["client"]
    registered = client.get_model_version(NAME, "1")
    client.set_registered_model_alias(NAME, "champion", "1")
    try:
        results = [_check(world, gate, "other", source) for source in (
            f"models:/{NAME}/1", f"models:/{NAME}@champion", registered.source)]  # fmt: skip
    finally:
        client.delete_registered_model_alias(NAME, "champion")
    assert registered.source.startswith("models:/m-")
    where = client.get_model_version_download_uri(NAME, "1")
    assert [(r.verdict, r.location) for r in results] == [(VersionState.LIVE, where)] * 3


def test_a_check_writes_nothing_to_the_database_or_the_registry(
    world: dict[str, Any], gate: dict[str, Any]
) -> None:
    before = _database(gate["engine"]), _registry(world["client"])
    for kind in ("breaking", "compatible", "missing_package"):
        _check(world, gate, NAME, world["runs"][kind])
    _check(world, gate, "not-registered-yet", world["runs"]["compatible"])
    assert (_database(gate["engine"]), _registry(world["client"])) == before


def test_a_model_not_registered_yet_takes_the_signature_as_its_contract(
    world: dict[str, Any], gate: dict[str, Any]
) -> None:
    result = _check(world, gate, "brand-new", world["runs"]["breaking"])
    assert result.verdict is VersionState.LIVE, result.reasons
    assert result.first_version and dry_run.FIRST_VERSION in result.notes
    assert result.contract is not None
    assert "c" in result.contract["inputs"]
    assert result.version == "1"
    # The environment is still checked: under isolate, the default, a package the serving
    # environment lacks gives the version an environment of its own, and the verdict says so.
    needs = _check(world, gate, "brand-new", world["runs"]["missing_package"])
    assert needs.verdict is VersionState.LIVE
    assert any(
        w.startswith("served from an environment of its own (layered")
        and "needs definitely-not-installed-pkg" in w
        for w in needs.warnings
    ), needs.warnings


def test_a_name_deleted_from_the_registry_keeps_its_contract_for_the_next_model(
    world: dict[str, Any], gate: dict[str, Any]
) -> None:
    name = "deleted-model"
    mlflow.register_model(world["runs"]["breaking"], name)  # contract: a, c
    gate["reconciler"].reconcile(name)
    world["client"].delete_registered_model(name)
    gate["reconciler"].reconcile(name)  # the tombstone holds the contract
    result = _check(world, gate, name, world["runs"]["compatible"])  # reads a, b
    assert result.verdict is VersionState.QUARANTINED
    assert any("'c'" in r for r in result.reasons), result.reasons
    assert not result.first_version and result.notes[0] == dry_run.KEPT_CONTRACT


def test_a_source_outside_the_allowlist_is_refused_as_the_gate_refuses_it(
    world: dict[str, Any], gate: dict[str, Any], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "MLmodel").write_text("flavors: {}\n")
    result = _check(world, gate, NAME, str(elsewhere))
    assert result.verdict is VersionState.QUARANTINED
    assert result.reasons == [
        f"its artifact cannot be read, so it cannot be checked: {NOT_ALLOWED}"
    ]


def test_local_files_get_the_verdict_their_logged_copy_gets(
    world: dict[str, Any], gate: dict[str, Any]
) -> None:
    logged = _check(world, gate, NAME, world["runs"]["breaking"])
    assert logged.location is not None
    directory = Path(logged.location)
    files = LocalFiles(
        mlmodel=(directory / "MLmodel").read_text(),
        requirements=(directory / "requirements.txt").read_text(),
        python_env=(directory / "python_env.yaml").read_text(),
    )
    reader = CandidateRegistry(world["uri"], artifact_sources=gate["settings"].artifact_sources)
    local = dry_run.check(
        NAME, lambda: reader.local_candidate(NAME, files), store=gate["store"],
        registry=gate["registry"], settings=gate["settings"], env=gate["env"],
    )  # fmt: skip
    assert (local.verdict, local.reasons, local.warnings) == (
        logged.verdict, logged.reasons, logged.warnings
    )


# The HTTP boundary: the app on the same registry.


@pytest.fixture()
def http(world: dict[str, Any], tmp_path: Path) -> Iterator[TestClient]:
    """The app, once its first resync decided the registered model (its contract is set)."""
    with TestClient(create_app(_settings(world, tmp_path))) as c:
        deadline = time.monotonic() + 20
        while c.get(f"/admin/models/{NAME}", headers=AUTH).status_code != 200 or (
            c.get(f"/admin/models/{NAME}", headers=AUTH).json()["contract"] is None
        ):
            assert time.monotonic() < deadline, "the first resync did not decide the model"
            time.sleep(0.05)
        yield c


def test_the_endpoint_answers_the_verdict_and_the_contract(
    world: dict[str, Any], http: TestClient
) -> None:
    r = http.post(f"/admin/models/{NAME}/check", headers=AUTH,
                  json={"source": world["runs"]["breaking"]})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verdict"] == "quarantined" and body["written"] is False
    assert any("'b'" in reason for reason in body["reasons"])
    assert [c["name"] for c in body["contract"]["inputs"]] == ["a", "b"]
    r = http.post(f"/admin/models/{NAME}/check", headers=AUTH, json={"source": f"models:/{NAME}/1"})
    assert r.status_code == 200 and r.json()["verdict"] == "live", r.text


@pytest.mark.parametrize(("body", "field"), [
    ({}, "source"),
    ({"source": "runs:/x/model", "local": {"mlmodel": "x"}}, "source"),
    ({"source": "model.pkl"}, "source"),
    ({"source": "models:/churn/latest"}, "source"),
    ({"source": "models:/churn/99"}, "source"),
    ({"source": "runs:/0123456789abcdef0123456789abcdef/model"}, "source"),
    ({"local": {"requirements": "x"}}, "local.mlmodel"),
    ({"source": "runs:/x", "extra": 1}, "extra"),
])  # fmt: skip
def test_bad_input_is_a_problem_naming_the_field(
    http: TestClient, body: dict[str, Any], field: str
) -> None:
    r = http.post(f"/admin/models/{NAME}/check", headers=AUTH, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in r.json()["errors"]] == [field], r.json()


def test_the_check_needs_the_admin_token(http: TestClient) -> None:
    r = http.post(f"/admin/models/{NAME}/check", json={"source": "runs:/x/model"})
    assert r.status_code == 401
    assert json.loads(r.text)["type"].endswith("unauthorized")

"""The dry run (``POST /admin/models/{name}/check``) against a real MLflow registry with no
server: a sqlite store and a local artifact root under tmp, the one allowed artifact source.

The verdict must be the one the gate gives the same artifact once it is registered, and the
check must write nothing: not to the controller's database, not to the registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from controller import dry_run, dry_run_proof
from controller.app import create_app
from controller.database import make_engine, migrate
from controller.dry_run_source import CandidateRegistry, LocalFiles
from controller.environment import ServingEnvironment
from controller.proofs import NOT_EXERCISED, ProvingEnvironment
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
                # Pins another version of a package the serving stack imports: shared first,
                # its own (isolated) environment once it fails there.
                "pinned": _log(experiment, _signature("a", "b"), ["pandas", "packaging==20.0"]),
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
    """The dry run as the controller makes it: where replicas prove versions (the policy on)."""
    reader = CandidateRegistry(world["uri"], artifact_sources=gate["settings"].artifact_sources)
    env = gate["env"]
    proving = ProvingEnvironment(env.python_version, env.distributions)
    return dry_run.check(
        name, lambda: reader.candidate(name, source), store=gate["store"],
        registry=gate["registry"], settings=gate["settings"], env=proving,
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
        _decided(c)
        yield c


def _decided(c: TestClient) -> None:
    deadline = time.monotonic() + 20
    while c.get(f"/admin/models/{NAME}", headers=AUTH).status_code != 200 or (
        c.get(f"/admin/models/{NAME}", headers=AUTH).json()["contract"] is None
    ):
        assert time.monotonic() < deadline, "the first resync did not decide the model"
        time.sleep(0.05)


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


# The proof (controller.dry_run_proof): the serving app's side is an httpx.MockTransport
# answering as serving.trials does (tests/unit/test_serving_trials.py tests that side).

SERVING_TOKEN = "serving-token-0123456789abcdef"


def _proved(
    world: dict[str, Any], gate: dict[str, Any], name: str, source: str,
    *answers: dict[str, Any] | httpx.Response,
) -> tuple[dry_run.DryRun, list[Any]]:  # fmt: skip
    """The dry run of ``source`` proven by a serving app answering ``answers`` in turn; the
    trials it was asked for (their bodies, with the Authorization header)."""
    asked: list[Any] = []

    def serving(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/-/trials"
        asked.append({**json.loads(request.content), "auth": request.headers["authorization"]})
        answer = answers[len(asked) - 1]
        return answer if isinstance(answer, httpx.Response) else httpx.Response(200, json=answer)

    result = asyncio.run(dry_run_proof.prove(
        _check(world, gate, name, source), serving_url="http://serving:8000/",
        token=SERVING_TOKEN, transport=httpx.MockTransport(serving),
        clock=lambda: 400.0 * len(asked),  # each trial takes 400 s
    ))  # fmt: skip
    return result, asked


def _answer(outcome: str, cause: str | None = None, **more: Any) -> dict[str, Any]:
    return {"outcome": outcome, "exercised": outcome != "not_exercised", "cause": cause,
            "failure": None, "environment_digest": None, "replica": "r1", "elapsed_ms": 12,
            **more}  # fmt: skip


def test_a_proof_asks_for_the_artifact_the_gate_read_and_a_pass_goes_live(
    world: dict[str, Any], gate: dict[str, Any]
) -> None:
    result, asked = _proved(world, gate, NAME, world["runs"]["compatible"], _answer("passed"))
    assert result.verdict is VersionState.LIVE and result.reasons == []
    assert dry_run.NO_PROOF not in result.notes
    said = "proof on its input example in the shared serving environment (replica r1, 12 ms)"
    assert f"{said}: passed" in result.notes, result.notes
    assert result.proof is not None and result.proof["outcome"] == "passed"
    [trial] = asked
    location = Path(str(result.location))
    digest = hashlib.sha256((location / "MLmodel").read_bytes()).hexdigest()
    assert trial["source"] == result.location and trial["mlmodel_digest"] == digest
    assert {f["path"] for f in trial["manifest"]} >= {"MLmodel", "python_model.pkl"}
    assert json.loads(trial["signature"]["inputs"])[1]["name"] == "b"
    assert (trial["environment"], trial["model"]) == (None, NAME)
    assert trial["timeout_s"] == dry_run_proof.PROVE_TIMEOUT_S
    assert trial["auth"] == f"Bearer {SERVING_TOKEN}"


def test_a_failed_proof_quarantines_with_the_cause_as_the_409_words_it(
    world: dict[str, Any], gate: dict[str, Any]
) -> None:
    result, _ = _proved(world, gate, NAME, world["runs"]["compatible"],
                        _answer("failed", "ValueError: the model was never fitted"))  # fmt: skip
    assert result.verdict is VersionState.QUARANTINED
    [reason] = result.reasons
    assert reason.startswith("failed its proof on serving (replica r1 at "), reason
    assert reason.endswith("ValueError: the model was never fitted; release it to try again")
    load, _ = _proved(world, gate, NAME, world["runs"]["compatible"],
                      _answer("failed", "ModuleNotFoundError: No module named 'x'",
                              exercised=False, failure="load-failed"))  # fmt: skip
    assert load.verdict is VersionState.QUARANTINED
    assert load.reasons[0].startswith("serving could not load its artifact (replica r1"), load
    bare, _ = _proved(world, gate, NAME, world["runs"]["compatible"], _answer("not_exercised"))
    assert bare.verdict is VersionState.LIVE and NOT_EXERCISED in bare.warnings


def test_a_version_of_its_own_environment_is_proven_there(
    world: dict[str, Any], gate: dict[str, Any]
) -> None:
    # Needs a package serving lacks: its own (layered) environment from the start.
    result, [trial] = _proved(world, gate, NAME, world["runs"]["missing_package"],
                              _answer("passed"))  # fmt: skip
    assert trial["environment"]["kind"] == "layered", trial["environment"]
    assert "definitely-not-installed-pkg==1.0" in trial["environment"]["requirements"]
    assert result.verdict is VersionState.LIVE, result.reasons
    assert any(n.startswith("proof on its input example in its own environment (layered")
               for n in result.notes), result.notes  # fmt: skip
    # Pins what serving has another version of: shared first, then its own, as the gate would.
    pinned, asked = _proved(world, gate, NAME, world["runs"]["pinned"],
                            _answer("failed", "ImportError: cannot import name 'x'"),
                            _answer("passed"))  # fmt: skip
    assert [t["environment"] and t["environment"]["kind"] for t in asked] == [None, "isolated"]
    assert pinned.verdict is VersionState.LIVE, pinned.reasons
    # One deadline for both trials: the second gets what the first left of it.
    assert [t["timeout_s"] for t in asked] == [600, 200]


def test_no_trial_for_a_verdict_the_gate_would_not_prove(
    world: dict[str, Any], gate: dict[str, Any]
) -> None:
    result, asked = _proved(world, gate, NAME, world["runs"]["breaking"])
    assert asked == [] and result.verdict is VersionState.QUARANTINED
    assert dry_run_proof.NOT_LIVE in result.notes


def test_a_trial_the_serving_app_did_not_make_cannot_tell(
    world: dict[str, Any], gate: dict[str, Any]
) -> None:
    checked = _check(world, gate, NAME, world["runs"]["compatible"])
    for answer, status, said in [
        (httpx.Response(503, json={"detail": "this replica is proving another artifact"}), 503,
         "answered 503: this replica is proving another artifact"),
        # Refused: asking again changes nothing, so 502 (no Retry-After), not 503.
        (httpx.Response(401, json={"detail": "a trial needs the serving token"}), 502,
         "is not the serving app's"),
        (httpx.Response(422, json={"detail": "predict_timeout_s: at most 1800"}), 502,
         "answered 422: predict_timeout_s"),
        (httpx.Response(504, json={"detail": "not within 600 s"}), 504, "answered 504"),
        (httpx.Response(200, text="<html>"), 503, "answered 200"),
    ]:  # fmt: skip
        transport = httpx.MockTransport(lambda _, answer=answer: answer)
        with pytest.raises(dry_run_proof.TrialFailed) as failed:
            asyncio.run(dry_run_proof.prove(checked, serving_url="http://serving:8000",
                                            token=SERVING_TOKEN, transport=transport))  # fmt: skip
        assert failed.value.status == status and said in str(failed.value), str(failed.value)


def test_a_proven_check_writes_nothing_to_the_database_or_the_registry(
    world: dict[str, Any], gate: dict[str, Any]
) -> None:
    before = _database(gate["engine"]), _registry(world["client"])
    _proved(world, gate, NAME, world["runs"]["compatible"], _answer("passed"))
    _proved(world, gate, NAME, world["runs"]["compatible"], _answer("failed", "ValueError: x"))
    _proved(world, gate, NAME, world["runs"]["pinned"], _answer("failed", "ImportError: y"),
            _answer("passed"))  # fmt: skip
    assert (_database(gate["engine"]), _registry(world["client"])) == before


def test_the_endpoint_says_what_prove_needs(world: dict[str, Any], tmp_path: Path) -> None:
    body = {"source": world["runs"]["compatible"], "prove": True}
    with TestClient(create_app(_settings(world, tmp_path))) as c:
        r = c.post(f"/admin/models/{NAME}/check", headers=AUTH, json=body)
    assert r.status_code == 501 and r.headers["content-type"].startswith("application/problem")
    assert "SIGSERVE_SERVING_URL" in r.json()["detail"], r.json()
    settings = _settings(world, tmp_path / "b", serving_url="http://127.0.0.1:9",
                         serving_token=SERVING_TOKEN)  # fmt: skip
    with TestClient(create_app(settings)) as c:
        _decided(c)
        r = c.post(f"/admin/models/{NAME}/check", headers=AUTH,
                   json={"local": {"mlmodel": "flavors: {}\n"}, "prove": True})  # fmt: skip
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "prove", r.json()
        # Nothing answers there: the proof cannot be made, and the dry run cannot tell.
        r = c.post(f"/admin/models/{NAME}/check", headers=AUTH, json=body)
        assert r.status_code == 503, r.text
        assert r.json()["type"].endswith("trial-unavailable") and "cannot reach" in r.text

"""The replica's side of the dry run's proof (``POST /-/trials``, ``serving.trials``): real MLflow
models saved on disk, loaded by the loader's own load path and called on their own input example
by the same steps as a registered version's proof, behind the serving token, one at a time."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlflow.models import infer_signature
from mlflow.pyfunc import PythonModel, save_model

from serving.problems import install_problem_handlers
from serving.trials import MAX_BODY_BYTES, TRIALS_PATH, Trials, install
from wire.artifact_manifest import HASH_LIMIT, ManifestFile, sha256_of

TOKEN = "serving-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLE = pd.DataFrame({"prompt": ["hello"]})
SIGNATURE = infer_signature(EXAMPLE, pd.DataFrame({"answer": ["HELLO"]}))
# Set while a Sleeps model's predict runs; the test lets it end.
RELEASE = threading.Event()


class Upper(PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return pd.DataFrame({"answer": [p.upper() for p in model_input["prompt"]]})


class Raises(PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        raise ValueError("the model was never fitted\nTraceback (most recent call last):")


class Sleeps(PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        RELEASE.wait(10)
        return pd.DataFrame({"answer": ["late"]})


def _manifest(path: Path) -> list[dict[str, Any]]:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return [
        ManifestFile(path=p.relative_to(path).as_posix(), size=p.stat().st_size,
                     sha256=sha256_of(p) if p.stat().st_size <= HASH_LIMIT else None
                     ).model_dump()
        for p in files
    ]  # fmt: skip


def _saved(directory: Path, name: str, model: PythonModel, *, example: bool = True
           ) -> dict[str, Any]:  # fmt: skip
    path = directory / name
    save_model(path=str(path), python_model=model, pip_requirements=[], signature=SIGNATURE,
               input_example=EXAMPLE if example else None)  # fmt: skip
    return {
        "model": "churn",
        "source": path.as_uri(),
        "mlmodel_digest": hashlib.sha256((path / "MLmodel").read_bytes()).hexdigest(),
        "manifest": _manifest(path),
        "signature": SIGNATURE.to_dict(),
        "timeout_s": 60,
    }


@pytest.fixture(scope="module")
def trials(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    directory = tmp_path_factory.mktemp("trials")
    return {
        "good": _saved(directory, "good", Upper()),
        "raises": _saved(directory, "raises", Raises()),
        "bare": _saved(directory, "bare", Upper(), example=False),
        "sleeps": _saved(directory, "sleeps", Sleeps()),
    }


@pytest.fixture()
def http() -> Iterator[TestClient]:
    app = FastAPI()
    install_problem_handlers(app)
    install(app, Trials(TOKEN, predict_timeout_s=30, replica="r1"))
    with TestClient(app) as client:
        yield client


def test_a_good_artifact_passes_and_a_raising_one_fails_with_its_first_line(
    http: TestClient, trials: dict[str, dict[str, Any]]
) -> None:
    r = http.post(TRIALS_PATH, json=trials["good"], headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() | {"elapsed_ms": 0} == {
        "outcome": "passed", "exercised": True, "cause": None, "failure": None,
        "environment_digest": None, "replica": "r1", "elapsed_ms": 0,
    }  # fmt: skip
    r = http.post(TRIALS_PATH, json=trials["raises"], headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["outcome"], body["exercised"]) == ("failed", True)
    assert body["cause"] == "ValueError: the model was never fitted"  # no traceback
    r = http.post(TRIALS_PATH, json=trials["bare"], headers=AUTH)
    assert (r.json()["outcome"], r.json()["exercised"]) == ("not_exercised", False)


def test_an_artifact_that_is_not_the_one_read_is_a_load_failure_of_its_own(
    http: TestClient, trials: dict[str, dict[str, Any]]
) -> None:
    changed = {**trials["good"], "mlmodel_digest": "0" * 64}
    body = http.post(TRIALS_PATH, json=changed, headers=AUTH).json()
    assert (body["outcome"], body["failure"]) == ("failed", "artifact-mismatch"), body
    assert "not 000000000000 the controller checked" in body["cause"]
    fewer = {**trials["good"], "manifest": trials["good"]["manifest"][1:]}
    body = http.post(TRIALS_PATH, json=fewer, headers=AUTH).json()
    assert body["failure"] == "artifact-mismatch" and "not the ones" in body["cause"], body


def test_a_trial_needs_the_serving_token(
    http: TestClient, trials: dict[str, dict[str, Any]]
) -> None:
    for headers in ({}, {"Authorization": "Bearer not-the-token-0123456789"},
                    {"Authorization": f"Basic {TOKEN}"}):  # fmt: skip
        r = http.post(TRIALS_PATH, json=trials["good"], headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["www-authenticate"] == "Bearer"
    app = FastAPI()
    install_problem_handlers(app)
    install(app, Trials(None, predict_timeout_s=30))  # a replica without one takes none
    with TestClient(app) as client:
        assert client.post(TRIALS_PATH, json=trials["good"], headers=AUTH).status_code == 401


@pytest.mark.parametrize(("change", "field"), [
    ({"mlmodel_digest": "abc"}, "mlmodel_digest"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"timeout_s": 10_000}, "timeout_s"),
    ({"source": ""}, "source"),
    ({"extra": 1}, "extra"),
    ({"environment": {"kind": "conda"}}, "environment.digest"),
])  # fmt: skip
def test_bad_input_is_a_problem_naming_the_field(
    http: TestClient, trials: dict[str, dict[str, Any]], change: dict[str, Any], field: str
) -> None:
    r = http.post(TRIALS_PATH, json={**trials["good"], **change}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in r.json()["errors"]], r.json()


def test_a_body_past_the_limit_is_refused_before_it_is_read(http: TestClient) -> None:
    r = http.post(TRIALS_PATH, content=b"x" * (MAX_BODY_BYTES + 1), headers=AUTH)
    assert r.status_code == 413, r.text
    r = http.post(TRIALS_PATH, content=b"{not json", headers=AUTH)
    assert r.status_code == 422, r.text


def test_one_trial_at_a_time_even_past_its_deadline(
    http: TestClient, trials: dict[str, dict[str, Any]]
) -> None:
    RELEASE.clear()
    slow = {**trials["sleeps"], "predict_timeout_s": 0.2}
    try:
        body = http.post(TRIALS_PATH, json=slow, headers=AUTH).json()
        assert body["outcome"] == "failed", body
        assert body["cause"].startswith("TimeoutError: it did not answer its own input example")
        # Its call still runs (a thread cannot be stopped): the replica takes no other trial.
        r = http.post(TRIALS_PATH, json=trials["good"], headers=AUTH)
        assert r.status_code == 503, r.text
        assert r.json()["type"].endswith("trial-busy") and r.headers["retry-after"] == "5"
    finally:
        RELEASE.set()
    deadline = time.monotonic() + 10
    while (r := http.post(TRIALS_PATH, json=trials["good"], headers=AUTH)).status_code == 503:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.05)
    assert r.json()["outcome"] == "passed", r.text

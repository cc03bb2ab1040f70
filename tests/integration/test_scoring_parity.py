"""sigserve's ``/invocations`` against ``mlflow models serve``, request for request.

Three registered versions (a column model with a param, a scikit-learn model logged with an
input example, a tensor model) each get the same request matrix (adapted from MLflow's own
``tests/pyfunc/test_scoring_server.py``: formats, orientations, content types, params, broken
bodies, unwrapped LLM inputs) sent to sigserve, through the session's stack and its HAProxy, and
to an ``mlflow models serve`` of the same version that this module starts (and stops, by its
process group). Answers must agree on their status class and, for 2xx, on their bodies after
float rounding; the differences sigserve makes on purpose are listed once, in ``DIFFERENCES``,
which the README's section "The MLflow scoring protocol" mirrors.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from sigserve.ports import free_port
from sigserve.processes import ManagedProcess
from tests.integration.conftest import HOST, ControllerHandle, wait_for

pytestmark = pytest.mark.integration

MODELS = Path(__file__).parent / "models"
JSON = "application/json"

# The one list of deliberate differences, mirrored by the README: label -> why sigserve answers
# otherwise. Labels that are cases of the matrix must differ there; the others are not requests
# a status class or 2xx body can tell apart.
DIFFERENCES: dict[str, str] = {
    "error bodies": (
        "errors are sigserve's problem+json with MLflow's error_code added, not MLflow's "
        "message and stack_trace (they repeat the request's data and the server's internals); "
        "a 4xx may be the more precise 404, 409, 413, 415 or 422 where MLflow says 400"
    ),
    "request limits": (
        "a body over SIGSERVE_MAX_BODY_MB (16 MB) is a 413 and one of more than "
        "SIGSERVE_MAX_RECORDS (10,000) records a 422, before any parsing; MLflow's server has "
        "no limit, and one request could hold a replica's memory"
    ),
    "ping without a load": (
        "/ping and /health answer from the routing table (live, bound to a checked artifact) "
        "and do not load the model; a version that fails to load answers 503 with its cause"
    ),
    "model raises": (
        "a model's own exception is the server's failure, not the request's: sigserve answers "
        "500 model-failed (MLflow: 400 BAD_REQUEST), so it counts in the 5xx rate operators "
        "alert on"
    ),
    "no content type": (
        "MLflow's server fails with a 500 when a request has no Content-Type; sigserve reads "
        "the body as JSON"
    ),
    "NaN in the answer": (
        "MLflow writes NaN and infinities as bare NaN/Infinity tokens, which are not JSON; "
        "sigserve writes null"
    ),
    "undeclared output columns": (
        "a prediction with a column the version's output schema lacks is a 500 model-failed "
        "naming it; MLflow never checks outputs and answers the column to every client"
    ),
}


@dataclass(frozen=True)
class Case:
    label: str
    body: bytes
    content_type: str | None = JSON


def as_json(label: str, body: Any, content_type: str | None = JSON) -> Case:
    return Case(label, json.dumps(body).encode(), content_type)


def tables(label: str, frame: pd.DataFrame) -> list[Case]:
    """The same table in every form MLflow's server reads."""
    records = frame.to_dict(orient="records")
    parquet = io.BytesIO()
    frame.to_parquet(parquet)
    return [
        as_json(f"{label}: dataframe_split", {"dataframe_split": frame.to_dict(orient="split")}),
        as_json(
            f"{label}: dataframe_split, charset=UTF-8",
            {"dataframe_split": frame.to_dict(orient="split")},
            JSON + "; charset=UTF-8",
        ),
        as_json(f"{label}: dataframe_records", {"dataframe_records": records}),
        as_json(f"{label}: instances", {"instances": records}),
        as_json(f"{label}: inputs", {"inputs": frame.to_dict(orient="list")}),
        Case(f"{label}: CSV", frame.to_csv(index=False).encode(), "text/csv"),
        Case(
            f"{label}: CSV, charset=utf-8",
            frame.to_csv(index=False).encode(),
            "text/csv; charset=utf-8",
        ),
        Case(f"{label}: parquet", parquet.getvalue(), "application/vnd.apache.parquet"),
    ]


def refusals(frame: pd.DataFrame) -> list[Case]:
    """Bodies and content types MLflow's server refuses, for any model."""
    good = json.dumps({"dataframe_records": frame.to_dict(orient="records")}).encode()
    return [
        Case("malformed JSON", b"this is,,,, not valid json"),
        Case("a JSON number", b"1"),
        Case("a JSON string", b'"1"'),
        Case("a JSON list", b"[1]"),
        as_json("no known key", {"not": "a serialized dataframe"}),
        as_json("two formats", {"dataframe_records": [], "dataframe_split": {"data": []}}),
        as_json("split given records", {"dataframe_split": frame.to_dict(orient="records")}),
        as_json("records given split", {"dataframe_records": frame.to_dict(orient="split")}),
        as_json(
            "split whose index does not fit its data",
            {"dataframe_split": {"index": [1, 2], "data": [[1], [2], [3]]}},
        ),
        Case("an unsupported content type", good, "not_a_supported_content_type"),
        Case("text/plain", good, "text/plain"),
        Case("an unknown content-type parameter", good, JSON + "; something=something"),
        Case("charset latin-1", good, JSON + "; charset=latin-1"),
        Case("an empty CSV", b"", "text/csv"),
        Case("no content type", good, None),
    ]


COLUMNS = pd.DataFrame({"prompt": ["a", "b"], "x": [1.5, -2.0]})
SKLEARN = pd.DataFrame({"a": [1.0, 2.0, 3.5], "b": [0.5, -1.0, 2.0]})
TENSOR = [[1.0, 2.0, 3.0], [4.0, -5.0, 6.5]]


def column_cases() -> list[Case]:
    records = COLUMNS.to_dict(orient="records")
    return [
        *tables("columns", COLUMNS),
        *refusals(COLUMNS),
        as_json("params", {"dataframe_records": records, "params": {"scale": 2.0}}),
        as_json("a param of the wrong type", {"dataframe_records": records,
                                              "params": {"scale": "abc"}}),
        as_json("an unknown param", {"dataframe_records": records, "params": {"nope": 1}}),
        as_json("an unknown key beside a known one", {"dataframe_records": records, "x": 1}),
        as_json("unwrapped LLM input", {"prompt": ["a", "b"], "x": [1.5, -2.0], "scale": 3.0}),
        as_json("unwrapped LLM input without params", {"prompt": ["c"], "x": [1.0]}),
        as_json("a missing column", {"dataframe_records": [{"prompt": "a"}]}),
        as_json("a column the signature does not have",
                {"dataframe_records": [{"prompt": "a", "x": 1.0, "z": 2}]}),
        as_json("a string where a double goes", {"dataframe_records": [{"prompt": "a",
                                                                        "x": "abc"}]}),
        as_json("model raises", {"dataframe_records": [{"prompt": "boom", "x": 1.0}]}),
        Case("NaN in the answer", b'{"dataframe_records": [{"prompt": "a", "x": NaN}]}'),
    ]


def sklearn_cases() -> list[Case]:
    return [
        *tables("sklearn", SKLEARN),
        *refusals(SKLEARN),
        as_json("instances as lists", {"instances": SKLEARN.to_numpy().tolist()}),
        as_json(
            "an incompatible frame",
            {"dataframe_split": pd.DataFrame(np.arange(10)).to_dict(orient="split")},
        ),
        as_json("unwrapped LLM input to a column model", {"input": "hello"}),
    ]


def tensor_cases() -> list[Case]:
    frame = pd.DataFrame(TENSOR)
    return [
        as_json("tensor: inputs", {"inputs": TENSOR}),
        as_json("tensor: instances", {"instances": TENSOR}),
        as_json("tensor: inputs, charset=UTF-8", {"inputs": TENSOR}, JSON + "; charset=UTF-8"),
        as_json("tensor: dataframe_split", {"dataframe_split": frame.to_dict(orient="split")}),
        Case("tensor: CSV", frame.to_csv(index=False).encode(), "text/csv"),
        as_json("a row of the wrong shape", {"inputs": [[1.0, 2.0]]}),
        as_json("strings where numbers go", {"inputs": [["a", "b", "c"]]}),
        as_json("tensor: params nobody declared", {"inputs": TENSOR, "params": {"k": 1}}),
        *refusals(frame),
    ]


def register_columns(name: str) -> str:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        Schema([ColSpec("string", "prompt"), ColSpec("double", "x")]),
        Schema([ColSpec("string", "out"), ColSpec("double", "y")]),
        ParamSchema([ParamSpec("scale", "double", 1.0)]),
    )
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(MODELS / "scoring_columns.py"), signature=signature,
            pip_requirements=[], registered_model_name=name,
        )
    return str(info.registered_model_version)


def register_sklearn(name: str) -> str:
    import mlflow
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(SKLEARN, [1.0, 2.0, 4.0])
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", input_example=SKLEARN.head(2), pip_requirements=[],
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def register_tensor(name: str) -> str:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    signature = ModelSignature(
        Schema([TensorSpec(np.dtype(np.float32), (-1, 3))]),
        Schema([TensorSpec(np.dtype(np.float32), (-1, 2))]),
    )
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(MODELS / "scoring_tensor.py"), signature=signature,
            pip_requirements=[], registered_model_name=name,
        )
    return str(info.registered_model_version)


KINDS = {
    "parity_columns": (register_columns, column_cases),
    "parity_sklearn": (register_sklearn, sklearn_cases),
    "parity_tensor": (register_tensor, tensor_cases),
}


@dataclass(frozen=True)
class Pair:
    """One registered version, served by sigserve and by ``mlflow models serve``."""

    name: str
    version: str
    sigserve: str
    mlflow: str


@pytest.fixture(scope="module")
def pairs(
    home: Path, tracking_uri: str, serving_url: str, controller_handle: ControllerHandle
) -> Iterator[dict[str, Pair]]:
    servers: list[ManagedProcess] = []
    found: dict[str, Pair] = {}
    bin_dir = Path(sys.executable).parent
    # MLflow's server runs ``uvicorn`` from PATH: this venv's.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        # Each MLflow server starts while the next model is logged: the two overlap.
        for name, (register, _) in KINDS.items():
            version = register(name)
            port = free_port()
            server = ManagedProcess(
                f"mlflow models serve {name}",
                [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{name}/{version}",
                 "--env-manager", "local", "-h", HOST, "-p", str(port)],
                env=env,
                log_path=home / f"mlflow-serve-{name}.log",
                health_url=f"http://{HOST}:{port}/ping",
            ).start()
            servers.append(server)
            found[name] = Pair(name, version, f"{serving_url}/models/{name}", f"http://{HOST}:{port}")
        for pair in found.values():
            wait_for(lambda p=pair: httpx.get(f"{p.sigserve}/ping").status_code == 200, 60)
        for server in servers:
            server.wait_healthy(120)
        yield found
    finally:
        for server in servers:
            server.stop()


def send(url: str, case: Case) -> httpx.Response:
    headers = {"content-type": case.content_type} if case.content_type is not None else {}
    return httpx.post(url, content=case.body, headers=headers, timeout=60)


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isnan(value) or math.isinf(value) else float(f"{value:.6g}")
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def outcome(response: httpx.Response) -> tuple[int, Any]:
    """What a client compares: the status class, and a 2xx answer's body."""
    if response.is_success:
        return response.status_code // 100, rounded(json.loads(response.text))
    return response.status_code // 100, None


@pytest.mark.parametrize("name", list(KINDS))
def test_invocations_answer_as_mlflow_models_serve_answers(
    pairs: dict[str, Pair], name: str
) -> None:
    pair = pairs[name]
    _, cases = KINDS[name]
    same, listed, unexpected = 0, [], []
    for case in cases():
        ours = send(f"{pair.sigserve}/invocations", case)
        theirs = send(f"{pair.mlflow}/invocations", case)
        if not ours.is_success:
            assert ours.headers["content-type"] == "application/problem+json", case.label
            problem = ours.json()
            assert problem["error_code"] and "stack_trace" not in problem, case.label
            assert "Traceback" not in ours.text, case.label
        if outcome(ours) == outcome(theirs):
            assert case.label not in DIFFERENCES, f"{case.label!r} no longer differs: unlist it"
            same += 1
        elif case.label in DIFFERENCES:
            listed.append(case.label)
        else:
            unexpected.append(
                f"{case.label}: sigserve {ours.status_code} {ours.text[:300]!r} / "
                f"mlflow {theirs.status_code} {theirs.text[:300]!r}"
            )
    print(f"\n{name}: {same} answers alike, {len(listed)} listed differences {listed}")
    assert not unexpected, "\n".join(unexpected)


@pytest.mark.parametrize("name", list(KINDS))
def test_probes_and_the_version_path_answer_as_mlflow_does(
    pairs: dict[str, Pair], name: str
) -> None:
    pair = pairs[name]
    for probe in ("ping", "health", "version"):
        ours, theirs = httpx.get(f"{pair.sigserve}/{probe}"), httpx.get(f"{pair.mlflow}/{probe}")
        assert (ours.status_code, ours.text) == (theirs.status_code, theirs.text), probe
        assert ours.headers["content-type"] == theirs.headers["content-type"], probe
    case = KINDS[name][1]()[0]
    by_path = send(f"{pair.sigserve}/versions/{pair.version}/invocations", case)
    assert outcome(by_path) == outcome(send(f"{pair.mlflow}/invocations", case))


def test_root_paths_reach_the_app_through_haproxy(serving_url: str) -> None:
    """The session's app serves no default model, so MLflow's root routes are sigserve's own
    404 problem: answered by the app, not by the proxy in front of it."""
    for method, path in (("POST", "/invocations"), ("GET", "/ping"), ("GET", "/version")):
        response = httpx.request(method, f"{serving_url}{path}")
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json", path
        assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND", path

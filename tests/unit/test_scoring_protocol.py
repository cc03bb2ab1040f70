"""MLflow's scoring protocol as a client of `mlflow models serve` speaks it, in a test client.

The reference is MLflow 3.17's own scoring server (``mlflow/pyfunc/scoring_server``); the same
requests against a real ``mlflow models serve`` are in
``tests/integration/test_scoring_parity.py``. Here: what each request reaches the model as, and
what comes back.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.models import ModelSignature
from mlflow.pyfunc.scoring_server import (
    infer_and_parse_data,
    predictions_to_json,
    unwrapped_predictions_to_json,
)
from mlflow.version import VERSION

from serving.api import create_app
from serving.loader import LoadedModel
from serving.model_host import ModelHost
from serving.resolve import Target
from serving.scoring_protocol import answer, answer_rows, rows_answer
from serving.table_source import TableSource
from tests.unit.test_serving_api import TABLE, Controller, EchoModel
from wire.routing_table import RoutingTable

Call = tuple[Target, Any, dict[str, Any] | None]


class Model(EchoModel):
    """The echo, except that a prompt "boom" makes its own code raise."""

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        prompts = data["prompt"]
        if "boom" in list(prompts):
            raise ValueError("the model's own bug, with the input 'boom' in its message")
        return super().predict(data, params)


class Backend(ModelHost):
    def __init__(self) -> None:
        self.calls: list[Call] = []

        async def get_model(target: Target) -> LoadedModel:
            return LoadedModel(Model(target, self.calls), Path("/nonexistent/sigserve-test"))

        super().__init__(get_model)


def started(
    default_model: str | None = None, table: RoutingTable = TABLE
) -> tuple[TestClient, Backend]:
    controller = Controller()
    controller.table = table
    source = TableSource("http://controller", transport=httpx.MockTransport(controller))
    backend = Backend()
    app = create_app(source, backend, startup_wait_s=2, default_model=default_model)
    return TestClient(app, raise_server_exceptions=False), backend


@pytest.fixture
def served() -> Iterator[tuple[TestClient, Backend]]:
    client, backend = started()
    with client:
        yield client, backend


def test_csv_bodies_are_read_with_the_versions_column_types(
    served: tuple[TestClient, Backend],
) -> None:
    client, backend = served
    for content_type in ("text/csv", "text/csv; charset=utf-8", "text/csv;charset=UTF-8"):
        response = client.post(
            "/models/echo/invocations",
            content=b"prompt\na\n1\n",
            headers={"content-type": content_type},
        )
        assert response.status_code == 200, (content_type, response.text)
        # "1" stays the string the signature says, as MLflow reads it (dtype from the schema).
        assert response.json() == {"predictions": [{"out": "echo/1:a"}, {"out": "echo/1:1"}]}
    assert backend.calls[0][1]["prompt"].tolist() == ["a", "1"]


def test_parquet_bodies(served: tuple[TestClient, Backend]) -> None:
    client, _ = served
    buffer = io.BytesIO()
    pd.DataFrame({"prompt": ["a", "b"]}).to_parquet(buffer)
    response = client.post(
        "/models/echo/invocations",
        content=buffer.getvalue(),
        headers={"content-type": "application/vnd.apache.parquet"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [{"out": "echo/1:a"}, {"out": "echo/1:b"}]}


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "not_a_supported_content_type",
        "application/json; something=something",
        "application/json; charset=latin-1",
        "text/csv; charset=utf-16",
    ],
)
def test_content_types_mlflow_refuses_are_415_problems(
    served: tuple[TestClient, Backend], content_type: str
) -> None:
    client, backend = served
    response = client.post(
        "/models/echo/invocations",
        content=b'{"dataframe_records": [{"prompt": "a"}]}',
        headers={"content-type": content_type},
    )
    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:sigserve:problem:unsupported-media-type"
    assert body["error_code"] == "BAD_REQUEST"
    assert body["errors"][0]["field"] == "content-type"
    assert backend.calls == []


def test_a_key_mlflow_does_not_know_beside_a_known_one_is_ignored_as_mlflow_does(
    served: tuple[TestClient, Backend],
) -> None:
    client, _ = served
    body = {"dataframe_records": [{"prompt": "a"}], "metadata": {"trace": "x"}}
    response = client.post("/models/echo/invocations", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [{"out": "echo/1:a"}]}
    # Without any known key it stays a refusal (MLflow: 400).
    refused = client.post("/models/echo/invocations", json={"rows": [{"prompt": "a"}]})
    assert refused.status_code == 422
    assert refused.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_unwrapped_llm_inputs_reach_the_model_as_sent_and_answer_unwrapped(
    served: tuple[TestClient, Backend],
) -> None:
    client, backend = served
    # "suffix" is a param of the version's signature: MLflow moves it into params; the rest is
    # the model's input, as it came.
    body = {"prompt": ["a", "b"], "suffix": "!", "temperature": 0.5}
    response = client.post("/models/echo/invocations", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == [{"out": "echo/1:a!"}, {"out": "echo/1:b!"}]
    _, data, params = backend.calls[0]
    assert data == {"prompt": ["a", "b"], "temperature": 0.5}
    assert params == {"suffix": "!"}
    for key in ("messages", "input"):
        client.post("/models/echo/invocations", json={key: "x", "prompt": ["c"]})
        assert backend.calls[-1][1] == {key: "x", "prompt": ["c"]}


def test_a_model_that_raises_is_a_500_problem_without_its_message_echoing_the_input(
    served: tuple[TestClient, Backend],
) -> None:
    client, _ = served
    response = client.post("/models/echo/invocations", json={"inputs": {"prompt": ["boom"]}})
    assert response.status_code == 500, response.text
    body = response.json()
    assert body["type"] == "urn:sigserve:problem:model-failed"
    assert body["error_code"] == "INTERNAL_ERROR"
    assert "Traceback" not in response.text and "stack_trace" not in body


@pytest.mark.parametrize(
    ("path", "headers", "status", "error_code"),
    [
        ("/models/nope/invocations", {}, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("/models/echo/versions/9/invocations", {}, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("/models/echo/versions/3/invocations", {}, 409, "RESOURCE_CONFLICT"),
        ("/models/echo/versions/4/invocations", {}, 503, "TEMPORARILY_UNAVAILABLE"),
        ("/models/echo/invocations", {"serve_multiplexed_model_id": "x/1"}, 400, "BAD_REQUEST"),
    ],
)
def test_every_problem_names_mlflows_error_code(
    served: tuple[TestClient, Backend],
    path: str,
    headers: dict[str, str],
    status: int,
    error_code: str,
) -> None:
    client, backend = served
    response = client.post(path, json={"inputs": {"prompt": ["a"]}}, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["error_code"] == error_code
    assert backend.calls == []


def test_the_version_in_the_path(served: tuple[TestClient, Backend]) -> None:
    client, backend = served
    body = {"dataframe_split": {"columns": ["prompt"], "data": [["a"]]}, "params": {"suffix": "."}}
    path, header = "/models/echo/versions/2/invocations", {"serve_multiplexed_model_id": "1"}
    response = client.post(path, json=body, headers=header)
    assert response.json() == {"predictions": [{"out": "echo/2:a."}]}
    assert backend.calls[0][0].version.version == "2"


def test_ping_health_and_version_per_model_as_mlflow_answers_them(
    served: tuple[TestClient, Backend],
) -> None:
    client, backend = served
    for probe in ("ping", "health"):
        response = client.get(f"/models/echo/{probe}")
        assert (response.status_code, response.text) == (200, "\n")
        assert response.headers["content-type"] == "application/json"
        assert client.get(f"/models/nope/{probe}").status_code == 404
        quarantined = client.get(f"/models/echo/versions/3/{probe}")
        assert quarantined.status_code == 409
    version = client.get("/models/echo/version")
    assert (version.status_code, version.text) == (200, VERSION)
    assert backend.calls == []  # a probe never runs a model


def test_the_root_routes_answer_for_the_default_model_when_there_is_one() -> None:
    client, backend = started(default_model="echo")
    with client:
        response = client.post("/invocations", json={"dataframe_records": [{"prompt": "a"}]})
        assert response.json() == {"predictions": [{"out": "echo/1:a"}]}
        assert backend.calls[0][0].model.name == "echo"
        for probe in ("ping", "health"):
            assert (client.get(f"/{probe}").status_code, client.get(f"/{probe}").text) == (
                200,
                "\n",
            )
        assert client.get("/version").text == VERSION

    client, _ = started()
    with client:
        for method, path in (("POST", "/invocations"), ("GET", "/ping"), ("GET", "/version")):
            assert client.request(method, path).status_code == 404


def test_a_version_typed_by_its_hints_gets_its_inputs_as_sent() -> None:
    """MLflow hands such a model its ``inputs`` unparsed (its type hints check them)."""
    echo = TABLE.models["echo"]
    typed = {**(echo.versions["1"].signature or {}), "is_signature_from_type_hint": "true"}
    entry = echo.versions["2"].model_copy(update={"version": "7", "signature": typed})
    model = echo.model_copy(update={"versions": {**echo.versions, "7": entry}})
    client, backend = started(table=TABLE.model_copy(update={"models": {"echo": model}}))
    with client:
        path = "/models/echo/versions/7/invocations"
        response = client.post(path, json={"inputs": {"prompt": ["a"]}})
        assert response.json() == {"predictions": [{"out": "echo/7:a"}]}
        sent = backend.calls[0][1]
        # The JSON as sent: a dict of lists, not MLflow's parse of it (a dict of arrays).
        assert sent == {"prompt": ["a"]} and type(sent["prompt"]) is list
        refused = client.post(path, json={"dataframe_records": [{"prompt": "a"}]})
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["field"] == "dataframe_records"


@pytest.mark.parametrize(
    "prediction",
    [
        pd.DataFrame({"out": ["a", "b"], "y": [1.5, 2.0]}),
        pd.Series([1.0, 2.5]),
        pd.Series(["a", "b"], name="label"),
        np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32),
        np.array([1, 2, 3]),
        [{"a": 1}, {"a": 2}],
        {"text": "hello", "scores": [0.5, 0.25]},
        "a bare string",
        3,
    ],
    ids=lambda p: type(p).__name__,
)
def test_answers_are_mlflows_for_every_kind_of_prediction(prediction: Any) -> None:
    """What MLflow's server writes for the same prediction (``predictions_to_json``)."""
    for unwrapped, write in ((False, predictions_to_json), (True, unwrapped_predictions_to_json)):
        written = io.StringIO()
        write(prediction, written)
        assert answer(prediction, unwrapped) == json.loads(written.getvalue())


FRAMES = {
    "numbers": pd.DataFrame({"i": np.array([1, 2], dtype=np.int32), "f": np.float32([0.1, 2])}),
    "nullable ints": pd.DataFrame({"n": pd.array([1, None], dtype="Int64")}),
    "strings and nulls": pd.DataFrame({"s": ["a", None], "b": [True, False]}),
    "times": pd.DataFrame({"t": pd.to_datetime(["2024-01-02T03:04:05", None])}),
    "objects": pd.DataFrame({"o": [np.int64(3), {"k": [1.5]}], "l": [[1, 2], np.array([3])]}),
    "numbered columns": pd.DataFrame([[1.5, "x"], [float("nan"), "y"]]),
    "repeated columns": pd.DataFrame([[1, 2]], columns=["a", "a"]),
    "no rows": pd.DataFrame({"a": pd.Series([], dtype=float)}),
}


@pytest.mark.parametrize("frame", list(FRAMES.values()), ids=list(FRAMES))
def test_frames_are_answered_as_mlflow_answers_them(frame: pd.DataFrame) -> None:
    """Frames are cut into records column by column, not by ``to_dict``: the same JSON (less
    MLflow's bare NaN, and its "NaT" for a missing time, both null here)."""
    written = io.StringIO()
    predictions_to_json(frame, written)
    expected = json.loads(written.getvalue().replace("NaN", "null").replace('"NaT"', "null"))
    assert answer(frame, False) == expected


@pytest.mark.parametrize(
    "prediction",
    [*FRAMES.values(), pd.Series([1.0, 2.5]), np.arange(4).reshape(2, 2), [1, 2], {"a": 1}, "x"],
    ids=lambda p: type(p).__name__,
)
def test_an_answer_cut_into_rows_is_the_same_answer(prediction: Any) -> None:
    """What a request gets from a call of its own through the batched path (its rows, or one
    ``Whole``) is MLflow's answer to that prediction."""
    assert rows_answer(answer_rows(prediction)) == answer(prediction, False)


def test_records_and_split_tables_reach_the_model_as_mlflows_parser_makes_them(
    served: tuple[TestClient, Backend],
) -> None:
    client, backend = served
    records = [{"prompt": "a"}, {"prompt": "b"}]
    bodies = [
        {"dataframe_records": records},
        {"dataframe_split": {"columns": ["prompt"], "data": [["a"], ["b"]]}},
    ]
    for body in bodies:
        response = client.post("/models/echo/invocations", json=body)
        assert response.json() == {"predictions": [{"out": "echo/1:a"}, {"out": "echo/1:b"}]}
        sent = backend.calls[-1][1]
        schema = ModelSignature.from_dict(TABLE.models["echo"].versions["1"].signature).inputs
        pd.testing.assert_frame_equal(sent, infer_and_parse_data(body, schema), check_exact=True)


def test_concurrent_invocations_of_plain_records_share_predict_calls() -> None:
    """/invocations bodies of plain records are batched as /serve's are (api.py runs them through
    ``backend.serve`` with the protocol's rows), and each still gets its own answer."""
    client, backend = started()

    async def send_all() -> list[Any]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sigserve") as http:
            bodies = [{"dataframe_records": [{"prompt": f"p{i}"}]} for i in range(16)]
            answers = await asyncio.gather(
                *(http.post("/models/echo/invocations", json=body) for body in bodies)
            )
        return [a.json() for a in answers]

    with client:
        answers = client.portal.call(send_all)
    assert answers == [{"predictions": [{"out": f"echo/1:p{i}"}]} for i in range(16)]
    assert len(backend.calls) < 16

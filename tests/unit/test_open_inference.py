"""The Open Inference Protocol routes, in a test client with the real model host and API.

The models are in-process stand-ins (a column model with a param, a float32 tensor model);
everything between the HTTP request and their ``predict`` is the app's own.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from serving.api import create_app
from serving.loader import LoadedModel
from serving.model_host import ModelHost
from serving.recorder import NoRecorder
from serving.resolve import Target
from serving.table_source import TableSource
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState

COLUMNS = ModelSignature(
    Schema([ColSpec("string", "prompt"), ColSpec("double", "x")]),
    Schema([ColSpec("string", "out"), ColSpec("double", "y")]),
    ParamSchema([ParamSpec("scale", "double", 1.0)]),
).to_dict()
TENSOR = ModelSignature(
    Schema([TensorSpec(np.dtype(np.float32), (-1, 3))]),
    Schema([TensorSpec(np.dtype(np.float32), (-1, 2))]),
).to_dict()
REASON = "input 'x' (double, required) is missing; this version reads 'z'"


def live(version: str, signature: dict[str, Any]) -> VersionEntry:
    return VersionEntry(
        version=version,
        state=VersionState.LIVE,
        signature=signature,
        source=f"models:/m-{version}",
        mlmodel_digest=version * 64,
    )


TABLE = RoutingTable(
    revision=3,
    models={
        "cols": ModelEntry(
            name="cols",
            default_version="1",
            contract=COLUMNS,
            versions={
                "1": live("1", COLUMNS),
                "2": VersionEntry(version="2", state=VersionState.QUARANTINED, reasons=[REASON]),
                "3": VersionEntry(version="3", state=VersionState.PENDING, signature=COLUMNS),
            },
        ),
        "tens": ModelEntry(
            name="tens", default_version="1", contract=TENSOR, versions={"1": live("1", TENSOR)}
        ),
    },
)


class Model:
    """``cols``: out = prompt + "!", y = x * scale. ``tens``: each row's sum and maximum."""

    def __init__(self, target: Target, calls: list[Any]) -> None:
        self.name = target.model.name
        self.calls = calls

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        self.calls.append(data)
        if self.name == "tens":
            array = np.asarray(data, dtype=np.float32)
            return np.stack([array.sum(axis=1), array.max(axis=1)], axis=1)
        scale = (params or {}).get("scale", 1.0)
        return pd.DataFrame({"out": data["prompt"] + "!", "y": data["x"] * scale})


class Backend(ModelHost):
    def __init__(self, **batching: Any) -> None:
        self.calls: list[Any] = []

        async def get_model(target: Target) -> LoadedModel:
            return LoadedModel(Model(target, self.calls), Path("/nonexistent/sigserve-test"))

        super().__init__(get_model, **batching)


class Counted(NoRecorder):
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int]] = []

    def request(self, model: str, version: str, status: int, seconds: float) -> None:
        self.requests.append((model, version, status))


def start(table: RoutingTable | None, **batching: Any) -> tuple[TestClient, Backend, Counted]:
    async def controller(request: httpx.Request) -> httpx.Response:
        if table is not None and table.revision > int(request.url.params["after"]):
            return httpx.Response(200, content=table.model_dump_json())
        await asyncio.sleep(0.01)
        return httpx.Response(204)

    source = TableSource("http://controller", transport=httpx.MockTransport(controller))
    backend, recorder = Backend(**batching), Counted()
    app = create_app(
        source, backend, startup_wait_s=2 if table else 0, recorder=recorder, max_records=100
    )
    return TestClient(app, raise_server_exceptions=False), backend, recorder


@pytest.fixture
def served() -> Iterator[tuple[TestClient, Backend, Counted]]:
    client, backend, recorder = start(TABLE)
    with client:
        yield client, backend, recorder


RECORDS = [{"prompt": "a", "x": 1.5}, {"prompt": "b", "x": -2.0}]
ROWS = [[1.0, 2.0, 3.0], [4.0, -5.0, 6.5]]


def column_request(**extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "prompt", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
            {"name": "x", "datatype": "FP64", "shape": [2], "data": [1.5, -2.0]},
        ],
        **extra,
    }


def tensor_request() -> dict[str, Any]:
    flat = [v for row in ROWS for v in row]
    return {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [2, 3], "data": flat}]}


def by_name(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in answer["outputs"]}


def test_health_and_server_metadata() -> None:
    client, _, _ = start(None)
    with client:
        assert client.get("/v2/health/live").json() == {"live": True}
        not_ready = client.get("/v2/health/ready")
        assert not_ready.status_code == 503 and not_ready.headers["retry-after"]
        assert not_ready.headers["content-type"] == "application/json"
        assert "routing table" in not_ready.json()["error"]
        assert "binary_tensor_data" in client.get("/v2").json()["extensions"]
    client, _, _ = start(TABLE)
    with client:
        assert client.get("/v2/health/ready").json() == {"ready": True}


def test_metadata_is_derived_from_the_signature(served: tuple[TestClient, Any, Any]) -> None:
    client, _, _ = served
    columns = client.get("/v2/models/cols").json()
    assert columns == {
        "name": "cols",
        "versions": ["1"],  # the quarantined and the pending one cannot be asked for
        "platform": "mlflow",
        "inputs": [
            {"name": "prompt", "datatype": "BYTES", "shape": [-1]},
            {"name": "x", "datatype": "FP64", "shape": [-1]},
        ],
        "outputs": [
            {"name": "out", "datatype": "BYTES", "shape": [-1]},
            {"name": "y", "datatype": "FP64", "shape": [-1]},
        ],
    }
    tensor = client.get("/v2/models/tens/versions/1").json()
    assert tensor["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 3]}]
    assert tensor["outputs"] == [{"name": "output-0", "datatype": "FP32", "shape": [-1, 2]}]
    ready = client.get("/v2/models/cols/versions/1/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_infer_answers_the_numbers_serve_answers(
    served: tuple[TestClient, Backend, Counted],
) -> None:
    client, _, recorder = served
    serve = client.post("/models/cols/serve", json={"inputs": RECORDS, "params": {"scale": 2.0}})
    infer = client.post(
        "/v2/models/cols/infer", json=column_request(id="r-7", parameters={"scale": 2.0})
    )
    assert infer.status_code == 200, infer.text
    answer = infer.json()
    assert (answer["id"], answer["model_name"], answer["model_version"]) == ("r-7", "cols", "1")
    outputs = by_name(answer)
    assert outputs["y"] == {"name": "y", "datatype": "FP64", "shape": [2], "data": [3.0, -4.0]}
    assert outputs["out"]["data"] == [r["out"] for r in serve.json()]
    assert outputs["y"]["data"] == [r["y"] for r in serve.json()]
    # Counted as /serve counts: model, version, status.
    assert recorder.requests[-1] == ("cols", "1", 200)

    tensor = client.post("/v2/models/tens/infer", json=tensor_request()).json()
    served_rows = client.post("/models/tens/serve", json={"inputs": ROWS}).json()
    assert by_name(tensor)["output-0"] == {
        "name": "output-0",
        "datatype": "FP32",
        "shape": [2, 2],
        "data": [v for row in served_rows for v in row],
    }


def test_outputs_are_selected_and_ordered(served: tuple[TestClient, Any, Any]) -> None:
    client, _, _ = served
    answer = client.post("/v2/models/cols/infer", json=column_request(outputs=[{"name": "y"}]))
    assert [o["name"] for o in answer.json()["outputs"]] == ["y"]
    unknown = client.post("/v2/models/cols/infer", json=column_request(outputs=[{"name": "z"}]))
    assert unknown.status_code == 422 and "'z' is not an output" in unknown.json()["error"]


def test_the_gate_answers_in_the_protocols_error_form(
    served: tuple[TestClient, Backend, Counted],
) -> None:
    client, backend, recorder = served
    quarantined = client.post("/v2/models/cols/versions/2/infer", json=column_request())
    assert quarantined.status_code == 409
    assert quarantined.headers["content-type"] == "application/json"
    body = quarantined.json()
    assert REASON in body["error"] and body["reasons"] == [REASON]
    assert body["type"] == "urn:sigserve:problem:version-quarantined"
    assert recorder.requests[-1] == ("cols", "2", 409)
    pending = client.post("/v2/models/cols/versions/3/infer", json=column_request())
    assert pending.status_code == 503 and pending.headers["retry-after"]
    assert client.get("/v2/models/cols/versions/2/ready").status_code == 409
    assert client.get("/v2/models/cols/versions/2").status_code == 409
    for path in ("/v2/models/nope/infer", "/v2/models/cols/versions/9/infer"):
        unknown = client.post(path, json=column_request())
        assert unknown.status_code == 404 and unknown.json()["error"], path
    assert client.get("/v2/models/nope/ready").status_code == 404
    route = client.get("/v2/repository/index")
    assert route.status_code == 404 and route.json()["error"]
    assert backend.calls == []  # none of it reached a model


def test_inputs_that_do_not_fit_name_the_field(served: tuple[TestClient, Any, Any]) -> None:
    client, backend, _ = served
    cases = {
        "inputs[1].data": [column_request()["inputs"][0],
                           {"name": "x", "datatype": "FP64", "shape": [2], "data": ["a", "b"]}],
        "inputs[0].datatype": [{"name": "prompt", "datatype": "STRING", "shape": [1],
                                "data": ["a"]}],
        "inputs[1].shape": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a"]},
              {"name": "x", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}],
        "inputs[0].data": [{"name": "prompt", "datatype": "BYTES", "shape": [3],
                            "data": ["a"]}],
        "inputs[0].z": [{"name": "z", "datatype": "INT64", "shape": [1], "data": [1]}],
    }  # fmt: skip
    for field, inputs in cases.items():
        response = client.post("/v2/models/cols/infer", json={"inputs": inputs})
        assert response.status_code == 422, (field, response.text)
        assert field in response.json()["error"], (field, response.json())
    params = client.post("/v2/models/cols/infer", json=column_request(parameters={"k": 1}))
    assert params.status_code == 422 and "params.k" in params.json()["error"]
    assert backend.calls == []


def test_too_many_records_are_refused_as_by_serve(served: tuple[TestClient, Any, Any]) -> None:
    client, backend, _ = served
    many = {"inputs": [
        {"name": "prompt", "datatype": "BYTES", "shape": [101], "data": ["a"] * 101},
        {"name": "x", "datatype": "FP64", "shape": [101], "data": [1.0] * 101},
    ]}  # fmt: skip
    response = client.post("/v2/models/cols/infer", json=many)
    assert response.status_code == 422 and "at most 100" in response.json()["error"]
    assert backend.calls == []


def binary_body(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), {
        "inference-header-content-length": str(len(head)),
        "content-type": "application/octet-stream",
    }


def strings(*values: str) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def test_the_binary_tensor_extension_both_ways(served: tuple[TestClient, Any, Any]) -> None:
    client, _, _ = served
    prompts, xs = strings("a", "b"), np.array([1.5, -2.0], dtype="<f8").tobytes()
    body, headers = binary_body(
        {
            "inputs": [
                {"name": "prompt", "datatype": "BYTES", "shape": [2],
                 "parameters": {"binary_data_size": len(prompts)}},
                {"name": "x", "datatype": "FP64", "shape": [2],
                 "parameters": {"binary_data_size": len(xs)}},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "out"}],
        },
        prompts,
        xs,
    )  # fmt: skip
    response = client.post("/v2/models/cols/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    split = int(response.headers["inference-header-content-length"])
    answer = json.loads(response.content[:split])
    y, out = answer["outputs"]
    assert y["parameters"]["binary_data_size"] == 16 and "data" not in y
    assert np.frombuffer(response.content[split:], dtype="<f8").tolist() == [1.5, -2.0]
    assert out["data"] == ["a!", "b!"]

    # Triton's binary_data_output: every output raw, the tensor model's too.
    flat = np.array(ROWS, dtype="<f4").tobytes()
    body, headers = binary_body(
        {
            "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [2, 3],
                        "parameters": {"binary_data_size": len(flat)}}],
            "parameters": {"binary_data_output": True},
        },
        flat,
    )  # fmt: skip
    response = client.post("/v2/models/tens/infer", content=body, headers=headers)
    split = int(response.headers["inference-header-content-length"])
    (output,) = json.loads(response.content[:split])["outputs"]
    assert output["shape"] == [2, 2]
    got = np.frombuffer(response.content[split:], dtype="<f4").reshape(2, 2)
    assert got.tolist() == [[6.0, 3.0], [5.5, 6.5]]


def test_a_binary_part_that_does_not_add_up_is_a_422(served: tuple[TestClient, Any, Any]) -> None:
    client, backend, _ = served
    spec = {"name": "x", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 16}}
    body, headers = binary_body({"inputs": [spec]}, b"\0" * 8)
    response = client.post("/v2/models/cols/infer", content=body, headers=headers)
    assert response.status_code == 422 and "binary_data_size" in response.json()["error"]
    body, headers = binary_body({"inputs": [spec]}, b"\0" * 24)
    response = client.post("/v2/models/cols/infer", content=body, headers=headers)
    assert response.status_code == 422 and "no input claims" in response.json()["error"]
    assert backend.calls == []


def test_the_version_header_chooses_as_for_serve(served: tuple[TestClient, Any, Any]) -> None:
    client, _, _ = served
    response = client.post(
        "/v2/models/cols/infer",
        json=column_request(),
        headers={"serve_multiplexed_model_id": "cols/2"},
    )
    assert response.status_code == 409


def test_malformed_parameters_are_a_422_not_a_500(served: tuple[TestClient, Any, Any]) -> None:
    client, backend, _ = served
    tensor = {"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0], "parameters": [1]}
    cases = {
        "inputs[0].parameters": {"inputs": [tensor]},
        "outputs[0].parameters": column_request(outputs=[{"name": "y", "parameters": "binary"}]),
        "parameters": column_request(parameters=["scale"]),
    }
    for field, body in cases.items():
        response = client.post("/v2/models/cols/infer", json=body)
        assert response.status_code == 422, (field, response.text)
        assert response.json()["errors"][0]["field"] == field
    assert backend.calls == []


def test_infer_and_serve_requests_share_a_predict_call() -> None:
    """Batched as /serve's own requests are: a V2 request and a /serve request of two records
    each fill one batch of four (a batch not full waits up to 5 s for more, so apart they would
    take that long, and be two calls)."""
    client, backend, _ = start(TABLE, max_batch_size=4, batch_wait_s=5.0)
    with client, ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        infer = pool.submit(client.post, "/v2/models/cols/infer", json=column_request())
        serve = pool.submit(client.post, "/models/cols/serve", json=RECORDS)
        answers = infer.result(), serve.result()
        assert time.monotonic() - started < 4
    assert [a.status_code for a in answers] == [200, 200]
    assert [len(call) for call in backend.calls] == [4]
    assert by_name(answers[0].json())["out"]["data"] == [r["out"] for r in answers[1].json()]

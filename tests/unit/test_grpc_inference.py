"""The Open Inference Protocol over gRPC, on the app's own path (``serving.grpc_inference``).

The service is the one ``create_app`` makes, called on the app's event loop (TestClient's
portal) with a context that records what a gRPC server would send. Requests are encoded and
answers decoded by tritonclient's gRPC client code (its messages and ``InferResult``), so the
wire format is a real client's, not this module's idea of it. A real gRPC round trip through
Ray Serve and HAProxy: tests/integration/test_open_inference_grpc.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from fastapi.testclient import TestClient
from tritonclient.grpc import _utils as triton_utils
from tritonclient.grpc import service_pb2 as triton_pb2

from serving import exceptions
from serving.api import create_app
from serving.contract import contract_for
from serving.grpc_inference import GrpcInference, status_of
from serving.grpc_protocol import grpc_predict_v2_pb2 as pb
from serving.grpc_tensors import infer_response
from serving.inference_tensors import InferRequest
from serving.table_source import TableSource
from tests.unit.test_open_inference import REASON, RECORDS, ROWS, TABLE, Backend, Counted, start


class Context:
    """What a gRPC server would send back: status, details, trailing metadata."""

    def __init__(self, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.metadata = list(metadata)
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing: dict[str, str] = {}

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing_metadata: list[tuple[str, str]]) -> None:
        self.trailing.update(trailing_metadata)


class Served:
    def __init__(self, client: TestClient, backend: Backend, recorder: Counted) -> None:
        self.client, self.backend, self.recorder = client, backend, recorder
        self.service: GrpcInference = client.app.state.grpc_inference  # type: ignore[attr-defined]

    def call(self, rpc: str, request: Any, context: Context | None = None) -> tuple[Any, Context]:
        context = context or Context()
        reply = self.client.portal.call(getattr(self.service, rpc), request, context)  # type: ignore[union-attr]
        return reply, context


@pytest.fixture
def served() -> Any:
    client, backend, recorder = start(TABLE)
    with client:
        yield Served(client, backend, recorder)


def triton_request(
    name: str, inputs: list[triton.InferInput], version: str = "", **options: Any
) -> pb.ModelInferRequest:
    """The request tritonclient's ``InferenceServerClient.infer`` sends (raw contents)."""
    request = triton_utils._get_inference_request(
        model_name=name, inputs=inputs, model_version=version, request_id=options.get("id", ""),
        outputs=options.get("outputs"), sequence_id=0, sequence_start=False,
        sequence_end=False, priority=0, timeout=None, parameters=options.get("parameters"),
    )  # fmt: skip
    return pb.ModelInferRequest.FromString(request.SerializeToString())


def column_inputs() -> list[triton.InferInput]:
    prompt = triton.InferInput("prompt", [2], "BYTES")
    prompt.set_data_from_numpy(np.array([r["prompt"] for r in RECORDS], dtype=object))
    x = triton.InferInput("x", [2], "FP64")
    x.set_data_from_numpy(np.array([r["x"] for r in RECORDS], dtype=np.float64))
    return [prompt, x]


def as_triton(reply: pb.ModelInferResponse) -> triton.InferResult:
    return triton.InferResult(triton_pb2.ModelInferResponse.FromString(reply.SerializeToString()))


def test_the_messages_are_the_protocols_on_the_wire() -> None:
    """Every field of the six RPCs' messages has the number and type tritonclient's has."""

    def fields(descriptor: Any) -> dict[str, Any]:
        found = {f.name: (f.number, f.type, f.is_repeated) for f in descriptor.fields}
        for nested in descriptor.nested_types:
            found.update({f"{nested.name}.{k}": v for k, v in fields(nested).items()})
        return found

    for name, ours in pb.DESCRIPTOR.message_types_by_name.items():
        theirs = triton_pb2.DESCRIPTOR.message_types_by_name[name]
        assert fields(ours) == fields(theirs), name
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    }  # fmt: skip


def test_infer_answers_the_numbers_serve_answers(served: Served) -> None:
    serve = served.client.post(
        "/models/cols/serve", json={"inputs": RECORDS, "params": {"scale": 2.0}}
    ).json()
    request = triton_request("cols", column_inputs(), id="r-7", parameters={"scale": 2.0})
    reply, context = served.call("model_infer", request)
    assert context.code is None, context.details
    result = as_triton(reply)
    assert result.as_numpy("y").tolist() == [r["y"] for r in serve] == [3.0, -4.0]
    assert [v.decode() for v in result.as_numpy("out")] == [r["out"] for r in serve]
    assert (reply.id, reply.model_name, reply.model_version) == ("r-7", "cols", "1")
    assert len(reply.raw_output_contents) == 2  # raw in, raw out, as Triton answers
    assert context.trailing["sigserve-model-version"] == "1"
    # Counted as /serve counts: model, version, status.
    assert served.recorder.requests[-1] == ("cols", "1", 200)

    tensor = triton.InferInput("input-0", [2, 3], "FP32")
    tensor.set_data_from_numpy(np.array(ROWS, dtype=np.float32))
    reply, context = served.call("model_infer", triton_request("tens", [tensor], version="1"))
    served_rows = served.client.post("/models/tens/serve", json={"inputs": ROWS}).json()
    output = as_triton(reply).as_numpy("output-0")
    assert output.dtype == np.float32 and output.tolist() == served_rows


def test_typed_contents_are_answered_typed(served: Served) -> None:
    request = pb.ModelInferRequest(model_name="cols", model_version="1")
    request.inputs.add(name="prompt", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [b"a", b"b"]
    )
    request.inputs.add(name="x", datatype="FP64", shape=[2]).contents.fp64_contents.extend(
        [1.5, -2.0]
    )
    request.outputs.add(name="y")
    reply, context = served.call("model_infer", request)
    assert context.code is None, context.details
    assert not reply.raw_output_contents
    assert [o.name for o in reply.outputs] == ["y"]  # selected, as REST's ``outputs``
    assert list(reply.outputs[0].contents.fp64_contents) == [1.5, -2.0]


def test_the_gate_answers_grpc_statuses(served: Served) -> None:
    quarantined, context = served.call("model_infer", triton_request("cols", column_inputs(), "2"))
    assert context.code == grpc.StatusCode.FAILED_PRECONDITION
    assert REASON in context.details
    assert context.trailing["sigserve-problem-type"] == "urn:sigserve:problem:version-quarantined"
    assert quarantined == pb.ModelInferResponse()
    assert served.recorder.requests[-1] == ("cols", "2", 409)

    _, context = served.call("model_infer", triton_request("cols", column_inputs(), "3"))
    assert context.code == grpc.StatusCode.UNAVAILABLE and context.trailing["retry-after"]
    for name, version in (("nope", ""), ("cols", "9")):
        _, context = served.call("model_infer", triton_request(name, column_inputs(), version))
        assert context.code == grpc.StatusCode.NOT_FOUND, (name, version)
    assert served.backend.calls == []  # none of it reached a model

    ready, _ = served.call("model_ready", pb.ModelReadyRequest(name="cols", version="1"))
    assert ready.ready is True
    ready, context = served.call("model_ready", pb.ModelReadyRequest(name="cols", version="2"))
    assert ready.ready is False and context.code is None
    _, context = served.call("model_ready", pb.ModelReadyRequest(name="nope"))
    assert context.code == grpc.StatusCode.NOT_FOUND


def test_inputs_that_do_not_fit_name_the_input(served: Served) -> None:
    short = column_inputs()
    request = triton_request("cols", short)
    request.raw_input_contents[1] = b"\x00" * 12  # 1.5 float64s
    _, context = served.call("model_infer", request)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents[1]" in context.details

    half = pb.ModelInferRequest(model_name="tens")
    half.inputs.add(name="input-0", datatype="FP16", shape=[1, 3])
    _, context = served.call("model_infer", half)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0].contents" in context.details and "raw" in context.details

    missing = pb.ModelInferRequest(model_name="cols")
    missing.inputs.add(name="prompt", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"a"
    )
    _, context = served.call("model_infer", missing)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT  # the contract's own check
    assert "inputs[0].x" in context.details and "required" in context.details
    assert served.recorder.requests[-1][2] == 422
    assert served.backend.calls == []


def test_a_message_over_the_body_limit_is_refused_before_its_tensors() -> None:
    async def controller(request: httpx.Request) -> httpx.Response:
        if TABLE.revision > int(request.url.params["after"]):
            return httpx.Response(200, content=TABLE.model_dump_json())
        await asyncio.sleep(0.01)
        return httpx.Response(204)

    source = TableSource("http://controller", transport=httpx.MockTransport(controller))
    backend, recorder = Backend(), Counted()
    app = create_app(source, backend, startup_wait_s=2, recorder=recorder, max_body_bytes=1024)
    with TestClient(app) as client:
        served = Served(client, backend, recorder)
        tensor = triton.InferInput("input-0", [100, 3], "FP32")
        tensor.set_data_from_numpy(np.ones((100, 3), dtype=np.float32))  # 1,200 bytes raw
        _, context = served.call("model_infer", triton_request("tens", [tensor]))
        assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 1024" in context.details
        small = triton.InferInput("input-0", [1, 3], "FP32")
        small.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
        _, context = served.call("model_infer", triton_request("tens", [small]))
        assert context.code is None, context.details
    assert [len(call) for call in backend.calls] == [1]


def test_metadata_is_the_rest_metadata(served: Served) -> None:
    for name, version in (("cols", ""), ("tens", "1")):
        request = pb.ModelMetadataRequest(name=name, version=version)
        reply, _ = served.call("model_metadata", request)
        rest = served.client.get(f"/v2/models/{name}").json()
        assert reply.name == rest["name"] and list(reply.versions) == rest["versions"]
        for tensors, listed in ((reply.inputs, rest["inputs"]), (reply.outputs, rest["outputs"])):
            assert [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors
            ] == listed
    live, _ = served.call("server_live", pb.ServerLiveRequest())
    ready, _ = served.call("server_ready", pb.ServerReadyRequest())
    info, _ = served.call("server_metadata", pb.ServerMetadataRequest())
    assert live.live and ready.ready and info.name == "sigserve"


def test_a_server_without_a_table_is_not_ready() -> None:
    client, backend, recorder = start(None)
    with client:
        ready, _ = Served(client, backend, recorder).call("server_ready", pb.ServerReadyRequest())
    assert ready.ready is False


class TooMany(exceptions.ProblemError):
    status = 429
    slug = "too-many"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (exceptions.UnknownModel("m"), grpc.StatusCode.NOT_FOUND),
        (exceptions.VersionQuarantined("q", reasons=["r"]), grpc.StatusCode.FAILED_PRECONDITION),
        (exceptions.InvalidInput("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (exceptions.BadModelId("id"), grpc.StatusCode.INVALID_ARGUMENT),
        (exceptions.VersionPending("p"), grpc.StatusCode.UNAVAILABLE),
        (exceptions.ModelUnavailable("u"), grpc.StatusCode.UNAVAILABLE),
        (exceptions.PredictTimeout("t"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (exceptions.BodyTooLarge("b"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (TooMany("slow down"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (exceptions.ModelFailed("boom"), grpc.StatusCode.INTERNAL),
    ],
)
def test_problems_map_to_grpc_statuses(exc: exceptions.ProblemError, code: Any) -> None:
    assert status_of(exc)[0] == code


def test_a_422_names_its_field_and_reason() -> None:
    exc = exceptions.InvalidInput(
        "the body does not fit", errors=[{"field": "inputs[0].x", "reason": "must be a number"}]
    )
    assert status_of(exc)[1] == "the body does not fit (inputs[0].x: must be a number)"


@pytest.mark.parametrize("raw", [False, True])
def test_typed_outputs_are_never_truncated_or_coerced(raw: bool) -> None:
    """1.7 in an INT8 output, 2 in a BOOL one: REST's JSON answers them as they are, so gRPC
    sends their JSON text as BYTES, never int 1 or true; values that fit stay typed."""
    request = InferRequest(id=None, inputs=[], params=None, outputs=None, binary={},
                           binary_default=False)  # fmt: skip
    x = json.dumps([{"type": "double", "name": "x"}])
    int8 = contract_for("m", {"inputs": x, "outputs": json.dumps(
        [{"type": "tensor", "tensor-spec": {"dtype": "int8", "shape": [-1]}}])})  # fmt: skip
    flags = contract_for("m", {"inputs": x, "outputs": json.dumps(
        [{"type": "boolean", "name": "flag"}])})  # fmt: skip

    def answered(records: list[Any], contract: Any) -> tuple[str, list[Any]]:
        reply = infer_response(request, records, contract, "m", "1", raw=raw)
        output = reply.outputs[0]
        if raw:
            return output.datatype, as_triton(reply).as_numpy(output.name).tolist()
        found = [list(v) for _, v in output.contents.ListFields()]  # the one field set
        return output.datatype, found[0] if found else []

    assert answered([1.7, 2], int8) == ("BYTES", [b"1.7", b"2.0"])
    assert answered([{"flag": 2}, {"flag": 0}], flags) == ("BYTES", [b"2", b"0"])
    assert answered([1, -2], int8) == ("INT8", [1, -2])
    assert answered([{"flag": True}, {"flag": False}], flags) == ("BOOL", [True, False])

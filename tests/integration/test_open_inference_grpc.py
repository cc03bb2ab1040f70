"""The Open Inference Protocol over gRPC on the session's real stack, called by Triton's client.

The session's stack serves gRPC (``grpc_port``, Serve's ``grpc_options``) through the fast
path: HAProxy's gRPC frontend in front of the replica's direct-ingress gRPC server, HTTP on its
own. ``tritonclient.grpc`` (raw tensor contents, as it sends by default) calls the models of
tests/integration/test_open_inference.py and must get the numbers ``/serve`` answers for the
same records, and the gate's statuses. Those models are reused when that module registered
them this session (it runs first when pytest runs the directory, in name order), so this module
costs its calls, not another registration.

tritonclient's ``grpc`` extra pins ``protobuf<7`` while the lock has 7.36.2; its modules are
what it installs with the ``http`` extra, and they run on protobuf 7 here, which this test
shows (they are imported beside sigserve's own, each in its own descriptor pool).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import HOST, ControllerHandle, wait_for
from tests.integration.haproxies import haproxy_configs
from tests.integration.test_open_inference import (
    COLUMNS,
    PROMPTS,
    ROWS,
    TENSOR,
    XS,
    register_models,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(serving_url: str, controller_handle: ControllerHandle) -> tuple[str, str]:
    """The column and the tensor model: test_open_inference's when it registered them this
    session, else the same registered here under names of their own (so that module, run
    after this one, still registers its own)."""
    if httpx.get(f"{serving_url}/models/{COLUMNS}").status_code == 404:
        register_models(serving_url, controller_handle, "oipg")
        return "oipg_columns", "oipg_tensor"
    return COLUMNS, TENSOR


@pytest.fixture(scope="module")
def client(serving_url: str, grpc_port: int) -> Iterator[Any]:
    import tritonclient.grpc

    triton = tritonclient.grpc.InferenceServerClient(url=f"{HOST}:{grpc_port}")
    # HAProxy takes a replica's gRPC server into its backend once a health check passed.
    wait_for(lambda: _live(triton), 60, every_s=0.5)
    yield triton
    triton.close()


def _live(triton: Any) -> bool:
    from tritonclient.utils import InferenceServerException

    try:
        return bool(triton.is_server_live())
    except InferenceServerException:
        return False


def column_inputs() -> list[Any]:
    import tritonclient.grpc

    prompt = tritonclient.grpc.InferInput("prompt", [len(PROMPTS)], "BYTES")
    prompt.set_data_from_numpy(np.array(PROMPTS, dtype=object))
    x = tritonclient.grpc.InferInput("x", [len(XS)], "FP64")
    x.set_data_from_numpy(np.array(XS, dtype=np.float64))
    return [prompt, x]


def test_haproxy_fronts_grpc_and_http_alike(serving_url: str, client: Any, grpc_port: int) -> None:
    """The fast path serves both: one HAProxy binds the HTTP port and the gRPC port (HTTP/2)."""
    http_port = serving_url.rsplit(":", 1)[1]
    assert any(
        f"bind 127.0.0.1:{http_port}".encode() in config
        and f"bind 127.0.0.1:{grpc_port} proto h2".encode() in config
        for config in haproxy_configs().values()
    )


def test_grpc_probes_and_metadata(client: Any, models: tuple[str, str]) -> None:
    columns, tensor_model = models
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(columns) and client.is_model_ready(columns, "1")
    assert not client.is_model_ready(columns, "2")  # quarantined
    metadata = client.get_model_metadata(columns)
    assert metadata.platform == "mlflow" and list(metadata.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("prompt", "BYTES", [-1]),
        ("x", "FP64", [-1]),
    ]
    tensor = client.get_model_metadata(tensor_model, "1")
    assert [(t.name, t.datatype, list(t.shape)) for t in tensor.inputs] == [
        ("input-0", "FP32", [-1, 3])
    ]
    assert client.get_server_metadata().name == "sigserve"


def test_grpc_gets_the_numbers_serve_answers(
    serving_url: str, client: Any, models: tuple[str, str]
) -> None:
    import tritonclient.grpc

    columns, tensor_model = models

    records = [{"prompt": p, "x": x} for p, x in zip(PROMPTS, XS, strict=True)]
    served = httpx.post(
        f"{serving_url}/models/{columns}/serve", json={"inputs": records, "params": {"scale": 3.0}}
    ).json()
    result = client.infer(columns, column_inputs(), request_id="req-1", parameters={"scale": 3.0})
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-1", columns, "1")
    assert result.as_numpy("y").tolist() == [r["y"] for r in served]
    assert [v.decode() for v in result.as_numpy("out").tolist()] == [r["out"] for r in served]

    tensor = tritonclient.grpc.InferInput("input-0", [2, 3], "FP32")
    tensor.set_data_from_numpy(np.array(ROWS, dtype=np.float32))
    answer = client.infer(tensor_model, [tensor], model_version="1").as_numpy("output-0")
    rows = httpx.post(f"{serving_url}/models/{tensor_model}/serve", json={"inputs": ROWS}).json()
    assert answer.dtype == np.float32 and answer.tolist() == rows


def test_grpc_hears_the_gate(client: Any, models: tuple[str, str]) -> None:
    import tritonclient.grpc
    from tritonclient.utils import InferenceServerException

    columns, _ = models

    with pytest.raises(InferenceServerException) as quarantined:
        client.infer(columns, column_inputs(), model_version="2")
    assert quarantined.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "input 'prompt'" in quarantined.value.message()  # the controller's reason
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("oip_nobody", column_inputs())
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    bad = tritonclient.grpc.InferInput("x", [1], "FP64")
    bad.set_data_from_numpy(np.array([1.0]))
    with pytest.raises(InferenceServerException) as invalid:
        client.infer(columns, [bad])
    assert invalid.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "prompt" in invalid.value.message()

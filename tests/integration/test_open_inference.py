"""The Open Inference Protocol on the session's real stack, called by Triton's own client.

A column model with a param and a float32 tensor model (those of the scoring-parity test) are
registered once; ``tritonclient[http]`` calls them through the stack's front door (HAProxy in
front of Ray Serve, route prefix ``/``), binary tensors as it sends them by default and JSON
ones, and must get the numbers ``/serve`` answers for the same records. A quarantined version
answers the client a 409 with its reasons. KServe's client runs in ``tests/zoo`` (its pins
clash with the lock, so it gets a venv of its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import ControllerHandle, wait_for

pytestmark = pytest.mark.integration

MODELS = Path(__file__).parent / "models"
COLUMNS, TENSOR = "oip_columns", "oip_tensor"
PROMPTS = ["a", "bb", "ccc"]
XS = [1.5, -2.0, 0.25]
ROWS = [[1.0, 2.0, 3.0], [4.0, -5.0, 6.5]]


def register(name: str, inputs: Any, outputs: Any, params: Any, code: str) -> str:
    import mlflow
    from mlflow.models import ModelSignature

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(MODELS / code),
            signature=ModelSignature(inputs, outputs, params), pip_requirements=[],
            registered_model_name=name,
        )  # fmt: skip
    return str(info.registered_model_version)


def register_models(serving_url: str, controller: ControllerHandle, prefix: str) -> None:
    """``{prefix}_columns`` (version 1 live, 2 quarantined) and ``{prefix}_tensor``, served."""
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    columns, tensor = f"{prefix}_columns", f"{prefix}_tensor"
    columns_out = Schema([ColSpec("string", "out"), ColSpec("double", "y")])
    scale = ParamSchema([ParamSpec("scale", "double", 1.0)])
    register(columns, Schema([ColSpec("string", "prompt"), ColSpec("double", "x")]),
             columns_out, scale, "scoring_columns.py")
    register(tensor, Schema([TensorSpec(np.dtype(np.float32), (-1, 3))]),
             Schema([TensorSpec(np.dtype(np.float32), (-1, 2))]), None, "scoring_tensor.py")
    # A second column version that reads another input: quarantined by the controller.
    register(columns, Schema([ColSpec("string", "text"), ColSpec("double", "x")]),
             columns_out, scale, "scoring_columns.py")  # fmt: skip
    for name in (columns, tensor):
        wait_for(lambda n=name: httpx.get(f"{serving_url}/models/{n}/ping").status_code == 200, 60)
    wait_for(lambda: controller.state_of(columns, "2") == "quarantined", 60)
    quarantined = f"{serving_url}/v2/models/{columns}/versions/2/ready"
    wait_for(lambda: httpx.get(quarantined).status_code == 409, 30)


@pytest.fixture(scope="module")
def stack(serving_url: str, controller_handle: ControllerHandle) -> str:
    register_models(serving_url, controller_handle, "oip")
    return serving_url


@pytest.fixture(scope="module")
def triton() -> Any:
    # A dev extra: a missing client fails the test, never skips it.
    import tritonclient.http

    return tritonclient.http


def client(triton: Any, url: str) -> Any:
    return triton.InferenceServerClient(url=url.removeprefix("http://"), network_timeout=60)


def column_inputs(triton: Any, binary: bool) -> list[Any]:
    prompt = triton.InferInput("prompt", [len(PROMPTS)], "BYTES")
    prompt.set_data_from_numpy(np.array(PROMPTS, dtype=object), binary_data=binary)
    x = triton.InferInput("x", [len(XS)], "FP64")
    x.set_data_from_numpy(np.array(XS, dtype=np.float64), binary_data=binary)
    return [prompt, x]


def test_tritonclient_probes_and_metadata(stack: str, triton: Any) -> None:
    triton_client = client(triton, stack)
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(COLUMNS)
    assert triton_client.is_model_ready(COLUMNS, "1")
    assert not triton_client.is_model_ready(COLUMNS, "2")  # quarantined
    metadata = triton_client.get_model_metadata(COLUMNS)
    assert metadata["platform"] == "mlflow" and metadata["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("prompt", "BYTES", [-1]),
        ("x", "FP64", [-1]),
    ]
    tensor = triton_client.get_model_metadata(TENSOR, "1")
    assert tensor["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 3]}]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_gets_the_numbers_serve_answers(stack: str, triton: Any, binary: bool) -> None:
    records = [{"prompt": p, "x": x} for p, x in zip(PROMPTS, XS, strict=True)]
    served = httpx.post(
        f"{stack}/models/{COLUMNS}/serve", json={"inputs": records, "params": {"scale": 3.0}}
    ).json()
    outputs = None if binary else [triton.InferRequestedOutput(n, binary_data=False)
                                   for n in ("y", "out")]  # fmt: skip
    result = client(triton, stack).infer(
        COLUMNS, column_inputs(triton, binary), outputs=outputs, request_id="req-1",
        parameters={"scale": 3.0},
    )  # fmt: skip
    assert result.get_response()["id"] == "req-1"
    assert result.as_numpy("y").tolist() == [r["y"] for r in served]
    out = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("out").tolist()]
    assert out == [r["out"] for r in served]

    tensor = triton.InferInput("input-0", [2, 3], "FP32")
    tensor.set_data_from_numpy(np.array(ROWS, dtype=np.float32), binary_data=binary)
    answer = client(triton, stack).infer(TENSOR, [tensor], model_version="1").as_numpy("output-0")
    rows = httpx.post(f"{stack}/models/{TENSOR}/serve", json={"inputs": ROWS}).json()
    assert answer.dtype == np.float32 and answer.tolist() == rows


def test_tritonclient_hears_the_gate(stack: str, triton: Any) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as quarantined:
        client(triton, stack).infer(COLUMNS, column_inputs(triton, True), model_version="2")
    assert quarantined.value.status() == "409"
    assert "input 'prompt'" in quarantined.value.message()  # the controller's reason
    with pytest.raises(InferenceServerException) as unknown:
        client(triton, stack).infer("oip_nobody", column_inputs(triton, True))
    assert unknown.value.status() == "404"
    bad = triton.InferInput("x", [1], "FP64")
    bad.set_data_from_numpy(np.array([1.0]), binary_data=False)
    with pytest.raises(InferenceServerException) as invalid:
        client(triton, stack).infer(COLUMNS, [bad])
    assert invalid.value.status() == "422" and "prompt" in invalid.value.message()

"""KServe's Python SDK calls sigserve's Open Inference Protocol on the session's real stack.

``kserve`` pins pandas 2 and protobuf 6, which clash with the lock, so its client runs in a venv
of its own (``foreign_env``: ~45 s cold from PyPI, cached after) as a subprocess, against the
models ``tests/integration/test_open_inference.py`` registers for Triton's client. It must get
the numbers ``/serve`` answers for the same records, binary tensors and JSON ones, and hear a
quarantined version's 409 with its reasons. (The SDK's REST client has no metadata call.)
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ControllerHandle
from tests.integration.test_open_inference import PROMPTS, ROWS, XS, register_models
from tests.zoo import foreign_env
from tests.zoo.conftest import figures_for

PINS = ["kserve==0.21.0"]
CLIENT = Path(__file__).parent / "clients" / "kserve_v2.py"


@pytest.fixture(scope="module")
def kserve() -> foreign_env.ForeignEnv:
    env = foreign_env.ensure(PINS)
    figures_for("test_open_inference_kserve")(
        "kserve venv " + ("built (cold)" if env.built else "from cache (warm)"), env.seconds
    )
    return env


def test_kserve_sdk_gets_the_numbers_serve_answers(
    tmp_path: Path, kserve: foreign_env.ForeignEnv, serving_url: str, ctl: ControllerHandle
) -> None:
    register_models(serving_url, ctl, "oipk")
    columns, tensor = "oipk_columns", "oipk_tensor"
    output = tmp_path / "kserve.json"
    run = kserve.run(CLIENT, serving_url, columns, tensor, str(output), timeout_s=120)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(output.read_text(encoding="utf-8"))

    assert found["live"] is True and found["ready"] is True and found["model_ready"] is True
    records = [{"prompt": p, "x": x} for p, x in zip(PROMPTS, XS, strict=True)]
    served = httpx.post(
        f"{serving_url}/models/{columns}/serve", json={"inputs": records, "params": {"scale": 3.0}}
    ).json()
    rows = httpx.post(f"{serving_url}/models/{tensor}/serve", json={"inputs": ROWS}).json()
    for binary in (True, False):
        answer = found[f"columns_binary_{binary}"]
        assert answer["id"] == "k-1"
        assert answer["outputs"]["y"] == [r["y"] for r in served], binary
        assert answer["outputs"]["out"] == [r["out"] for r in served], binary
        assert found[f"tensor_binary_{binary}"] == {"dtype": "float32", "rows": rows}, binary
    assert found["quarantined"]["status"] == 409
    assert "input 'prompt'" in found["quarantined"]["message"]  # the controller's reason

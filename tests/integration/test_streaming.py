"""``predict_stream`` over Server-Sent Events on the session's real stack.

A PythonModel with ``predict_stream`` (``models/streaming_echo.py``) is registered in MLflow and
streamed over real HTTP, through HAProxy (the stack's front door) and through Ray Serve's own
Python proxy (HAProxy's fallback server); every chunk must equal what the same registered
version's ``predict_stream`` yields in this process for the same input. The model waits for a
file between its first and second chunk, so the first event arriving before the file is made
shows the answer is streamed, not buffered to the end.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ControllerHandle, problem, wait_for

pytestmark = pytest.mark.integration

MODEL = Path(__file__).parent / "models" / "streaming_echo.py"
NAME = "streaming_echo"
SSE = {"Accept": "text/event-stream"}


def register(*, streamable: bool | None) -> str:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        Schema([ColSpec("string", "prompt")]),
        Schema([ColSpec("string", "answer")]),
        ParamSchema(
            [
                ParamSpec("gate", "string", ""),
                ParamSpec("repeat", "long", 1),
                ParamSpec("fail_after", "long", 0),
                ParamSpec("endless", "long", 0),
                ParamSpec("closed_marker", "string", ""),
            ]
        ),
    )
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(MODEL), signature=signature, pip_requirements=[],
            streamable=streamable, registered_model_name=NAME,
        )  # fmt: skip
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def stack(serving_url: str, controller_handle: ControllerHandle) -> str:
    """Version 1 streams (MLflow sees ``predict_stream``); version 2 is the same code logged
    with ``streamable=False``, so MLflow's pyfunc will not stream it."""
    assert register(streamable=None) == "1"
    assert register(streamable=False) == "2"
    for version in ("1", "2"):
        ping = f"{serving_url}/models/{NAME}/versions/{version}/ping"
        wait_for(lambda u=ping: httpx.get(u).status_code == 200, 60)
    return serving_url


def ray_proxy_url(serving_url: str) -> str:
    """Ray Serve's Python proxy: the backup server in the config of the HAProxy that binds the
    serving port (the fast path sends nothing there while replicas answer)."""
    port = serving_url.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not cmdline or not cmdline[0].endswith(b"haproxy"):
            continue
        config = next((a.decode() for a in cmdline if a.endswith(b".cfg")), "")
        text = Path(config).read_text() if config else ""
        if f"bind 127.0.0.1:{port}" in text:
            found = re.search(r"server \S+ ([\d.]+):(\d+) check backup", text)
            assert found, f"no fallback proxy in {config}"
            return f"http://{found[1]}:{found[2]}"
    pytest.fail(f"no HAProxy binds the serving port {port}")


def events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event type, data) per Server-Sent Event, as they arrive."""
    kind, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
            continue
        field, _, value = line.partition(":")
        if field == "event":
            kind = value.removeprefix(" ")
        elif field == "data":
            data.append(value.removeprefix(" "))


def in_process(version: str, prompt: str, params: dict[str, Any]) -> list[Any]:
    """What the registered version's own ``predict_stream`` yields here, for the same input."""
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    return list(model.predict_stream({"prompt": prompt}, params=params))


@pytest.mark.parametrize("front", ["haproxy", "ray-proxy"])
def test_chunks_stream_as_they_are_made_and_equal_the_models_own(
    stack: str, front: str, tmp_path: Path
) -> None:
    url = stack if front == "haproxy" else ray_proxy_url(stack)
    gate = tmp_path / "go-on"
    prompt = "streams arrive one chunk at a time"
    body = {"inputs": {"prompt": prompt}, "params": {"gate": str(gate), "repeat": 2}}
    received = []
    with httpx.Client(base_url=url, timeout=60) as client:
        path = f"/models/{NAME}/serve"
        with client.stream("POST", path, json=body, headers=SSE) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            for kind, data in events(response.iter_lines()):
                assert kind == "message", data
                if not received:
                    # The model waits for the gate before its second chunk: this one came alone.
                    assert not gate.exists()
                    gate.touch()
                received.append(data)
    assert received[-1] == "[DONE]"
    chunks = [json.loads(d) for d in received[:-1]]
    assert chunks == in_process("1", prompt, {"gate": str(gate), "repeat": 2})
    assert [c["token"] for c in chunks] == [w * 2 for w in prompt.split()]


@pytest.mark.parametrize("front", ["haproxy", "ray-proxy"])
def test_a_client_that_leaves_stops_the_models_generator(
    stack: str, front: str, tmp_path: Path
) -> None:
    url = stack if front == "haproxy" else ray_proxy_url(stack)
    closed = tmp_path / "closed"
    params = {"endless": 1, "closed_marker": str(closed)}
    body = {"inputs": {"prompt": "on and on"}, "params": params}
    with httpx.Client(base_url=url, timeout=60) as client:
        path = f"/models/{NAME}/serve"
        with client.stream("POST", path, json=body, headers=SSE) as response:
            arrived = events(response.iter_lines())
            assert [json.loads(next(arrived)[1])["token"] for _ in range(3)] == ["on", "and", "on"]
            assert not closed.exists()  # the generator runs while the client listens
        # Leaving closes the connection; the replica closes the generator, whose finally
        # makes the marker (else it would yield forever).
    wait_for(closed.exists, 15, 0.05)


def test_a_failure_mid_stream_is_an_error_event_and_the_gate_holds(stack: str) -> None:
    body = {"inputs": {"prompt": "two words"}, "params": {"fail_after": 1}}
    with httpx.Client(base_url=stack, timeout=60) as client:
        streamed = client.post(f"/models/{NAME}/serve", json=body, headers=SSE)
        assert streamed.status_code == 200
        got = list(events(iter(streamed.text.splitlines())))
        first_two = [json.loads(d) for _, d in got[:2]]
        assert first_two == [{"index": 0, "token": "two"}, {"index": 1, "token": "words"}]
        kind, data = got[2]
        assert kind == "error" and len(got) == 3
        failed = json.loads(data)
        assert failed["type"] == "urn:sigserve:problem:model-failed"
        assert "RuntimeError: the stream broke after its words" in failed["detail"]

        # Version 2 was logged as not streamable: a 406 before any event, JSON still served.
        refused = client.post(
            f"/models/{NAME}/versions/2/serve", json={"prompt": "a"}, headers=SSE
        )
        assert refused.status_code == 406
        assert problem(refused)["type"] == "urn:sigserve:problem:stream-unsupported"
        plain = client.post(f"/models/{NAME}/versions/2/serve", json={"prompt": "a"})
        assert plain.json() == [{"answer": "A"}]
        # The contract is checked as for JSON.
        invalid = client.post(f"/models/{NAME}/serve", json={"prompt": 3}, headers=SSE)
        assert invalid.status_code == 422
        assert problem(invalid)["errors"][0]["field"] == "prompt"

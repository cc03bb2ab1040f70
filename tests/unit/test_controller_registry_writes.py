"""The write-back's tag and alias writes are one request each (``controller.registry_writes``).

The registry is the real ``Registry`` (MLflow's client over HTTP); MLflow's REST API is a small
HTTP server that records each request and answers as MLflow does (the seam): a write made
through ``MlflowClient`` first asks whether the model is a prompt, one made here does not, and
errors are told apart as before.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from controller.exceptions import RegisteredModelGone, RegistryRefused
from controller.own_writes import OwnWrites, RememberingWriter, alias_set, tag_set
from controller.registry import Registry


class _MLflow(BaseHTTPRequestHandler):
    """MLflow's registry API as far as the writes go: every request recorded; model ``gone``
    does not exist, model ``locked`` answers a write with 403."""

    seen: list[tuple[str, str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        name = body.get("name") or self.path.split("name=")[-1].split("&")[0]
        type(self).seen.append((self.command, self.path.split("?")[0]))
        if name == "gone":
            status, answer = 404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                                   "message": "Registered Model with name=gone not found"}
        elif name == "locked" and self.command == "POST":
            status, answer = 403, {"error_code": "PERMISSION_DENIED", "message": "no"}
        elif self.command == "GET":
            status, answer = 200, {"registered_model": {"name": name, "tags": []}}
        else:
            status, answer = 200, {}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def mlflow_url() -> Iterator[str]:
    _MLflow.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MLflow)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_tag_or_alias_write_of_the_write_back_is_one_request(mlflow_url: str) -> None:
    memory = OwnWrites()
    writer = RememberingWriter(Registry(mlflow_url), memory)
    writer.set_version_tag("m", "1", "sigserve.state", "live")
    writer.set_alias("m", "serving", "1")
    assert _MLflow.seen == [
        ("POST", "/api/2.0/mlflow/model-versions/set-tag"),
        ("POST", "/api/2.0/mlflow/registered-models/alias"),
    ]  # no get_registered_model before each (MlflowClient's prompt check)
    assert memory.consume(tag_set("m", "1", "sigserve.state", "live"))
    assert memory.consume(alias_set("m", "serving", "1"))


def test_a_write_to_a_model_gone_or_refused_is_told_apart_as_before(mlflow_url: str) -> None:
    memory = OwnWrites()
    writer = RememberingWriter(Registry(mlflow_url), memory)
    with pytest.raises(RegisteredModelGone):
        writer.set_version_tag("gone", "1", "sigserve.state", "live")
    with pytest.raises(RegistryRefused, match="PERMISSION_DENIED"):
        writer.set_alias("locked", "serving", "1")
    assert len(memory) == 0 and memory.take_made("gone") == memory.take_made("locked") == []

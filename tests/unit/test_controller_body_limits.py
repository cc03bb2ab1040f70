"""Hostile bodies on a real controller over real HTTP (issue 16): a route that needs a
credential answers 401 without reading the body, and one that gets the credential refuses a
body past its bound (413), counted as it streams (chunked) and not only from Content-Length.

The controller is a child process (``python -m controller``), so its memory is its own: its
peak RSS (``VmHWM``, reset through ``/proc/<pid>/clear_refs``) is what a 64 MiB body costs it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sigserve.ports import free_port
from sigserve.processes import ManagedProcess
from sigserve.stack import controller

HOST = "127.0.0.1"
ADMIN = "admin-token-of-32-characters-xyz"
SERVING = "serving-token-of-32-characters-x"
SECRET = "webhook-secret-of-32-characters!"
MIB = 1024 * 1024
# (method, path, the credential the route needs)
ROUTES = [
    ("PUT", "/admin/models/x/default", ADMIN),
    ("POST", "/serving/load-failures", SERVING),
]
IDS = ["admin", "load-report"]


@dataclass(frozen=True)
class Controller:
    port: int
    pid: int


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, object]:
        assert self.headers["content-type"].startswith("application/problem+json")
        parsed: dict[str, object] = json.loads(self.body)
        return parsed


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    home = tmp_path_factory.mktemp("controller")
    port = free_port()
    process: ManagedProcess = controller(
        home, host=HOST, port=port, tracking_uri=f"http://{HOST}:{free_port()}",
        admin_token=ADMIN, webhook_secret=SECRET, serving_token=SERVING,
        register_webhook=False, resync_interval_s=3600,
    )  # fmt: skip
    # Alive is enough: nothing listens at the registry address, so it is never fully ready.
    process.health_url = f"http://{HOST}:{port}/healthz"
    process.env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    process.start()
    try:
        process.wait_healthy(60)
        assert process.pid is not None
        yield Controller(port, process.pid)
    finally:
        process.stop()


def _json_body(size: int) -> Iterator[bytes]:
    """A valid JSON object of ``size`` bytes or so, in 1 MiB pieces: what a parser would keep."""
    yield b'{"version": "'
    for _ in range(size // MIB):
        yield b"1" * MIB
    yield b'"}'


def send(
    ctl: Controller,
    method: str,
    path: str,
    *,
    token: str | None = None,
    chunks: Iterator[bytes] | None = None,
    declared: int | None = None,
) -> Answer:
    """One request on its own connection; the body (chunked when ``chunks``) is sent from a
    thread while the answer is read, as a client that streams would."""
    head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Content-Type: application/json"]
    if token is not None:
        head.append(f"Authorization: Bearer {token}")
    head.append("Transfer-Encoding: chunked" if chunks is not None else "")
    if declared is not None:
        head.append(f"Content-Length: {declared}")
    sock = socket.create_connection((HOST, ctl.port), timeout=10)

    def stream() -> None:
        # A server that answered without reading closes the connection: the rest is refused.
        with contextlib.suppress(OSError):
            for chunk in chunks or ():
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            if chunks is not None:
                sock.sendall(b"0\r\n\r\n")

    with sock:
        sock.sendall(("\r\n".join(h for h in head if h) + "\r\n\r\n").encode())
        sender = threading.Thread(target=stream, daemon=True)
        sender.start()
        answer = _read_answer(sock)
        sock.shutdown(socket.SHUT_RDWR)
    sender.join(30)
    return answer


def _read_answer(sock: socket.socket) -> Answer:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed before an answer: {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        piece = sock.recv(65536)
        assert piece, "connection closed inside the answer"
        body += piece
    return Answer(int(status_line.split()[1]), headers, body)


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.parametrize(("method", "path", "token"), ROUTES, ids=IDS)
def test_an_unauthenticated_64_mib_chunked_body_is_refused_unread(
    ctl: Controller, method: str, path: str, token: str
) -> None:
    Path(f"/proc/{ctl.pid}/clear_refs").write_text("5")  # peak RSS := RSS now
    before = _kib(ctl.pid, "VmRSS")
    answer = send(ctl, method, path, chunks=_json_body(64 * MIB))
    grew_mib = (_kib(ctl.pid, "VmHWM") - before) / 1024
    assert answer.status == 401
    assert answer.problem()["type"] == "urn:sigserve:problem:unauthorized"
    assert answer.headers["www-authenticate"] == "Bearer"
    assert grew_mib < 4, f"the controller's peak RSS grew {grew_mib:.1f} MiB"


@pytest.mark.parametrize(("method", "path", "token"), ROUTES, ids=IDS)
@pytest.mark.parametrize("presented", [None, "", "wrong-token-of-32-characters-xyz"])
def test_a_declared_64_mib_body_without_the_credential_is_a_401_problem(
    ctl: Controller, method: str, path: str, token: str, presented: str | None
) -> None:
    # Nothing of the body is sent: the answer comes from the headers alone.
    answer = send(ctl, method, path, token=presented, declared=64 * MIB)
    assert answer.status == 401
    assert answer.problem()["type"] == "urn:sigserve:problem:unauthorized"


@pytest.mark.parametrize(("method", "path", "token"), ROUTES, ids=IDS)
def test_a_chunked_body_past_the_bound_with_the_credential_is_a_413_problem(
    ctl: Controller, method: str, path: str, token: str
) -> None:
    Path(f"/proc/{ctl.pid}/clear_refs").write_text("5")
    before = _kib(ctl.pid, "VmRSS")
    answer = send(ctl, method, path, token=token, chunks=_json_body(64 * MIB))
    grew_mib = (_kib(ctl.pid, "VmHWM") - before) / 1024
    assert answer.status == 413
    problem = answer.problem()
    assert problem["type"] == "urn:sigserve:problem:payload-too-large"
    assert "bytes" in str(problem["detail"])
    assert grew_mib < 4, f"the controller's peak RSS grew {grew_mib:.1f} MiB"


@pytest.mark.parametrize(("method", "path", "token"), ROUTES, ids=IDS)
def test_a_declared_body_past_the_bound_with_the_credential_is_a_413_problem(
    ctl: Controller, method: str, path: str, token: str
) -> None:
    answer = send(ctl, method, path, token=token, declared=64 * MIB)
    assert answer.status == 413
    assert answer.problem()["type"] == "urn:sigserve:problem:payload-too-large"


def test_a_small_body_with_the_credential_still_reaches_the_route(ctl: Controller) -> None:
    body = b'{"version": "1"}'
    answer = send(ctl, "PUT", "/admin/models/x/default", token=ADMIN, chunks=iter([body]))
    assert answer.status == 404  # read, parsed and looked up: no model "x" here
    assert answer.problem()["type"] == "urn:sigserve:problem:not-found"
    report = {"model": "x", "version": "1", "mlmodel_digest": "0" * 64, "kind": "load-failed",
              "cause": "boom", "replica": "r1"}  # fmt: skip
    sent = json.dumps(report).encode()
    answer = send(ctl, "POST", "/serving/load-failures", token=SERVING, chunks=iter([sent]))
    assert answer.status == 404

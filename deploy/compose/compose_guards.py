"""The guards in front of MLflow and the controller, checked from the host
(docs/security.md, "MLflow's own authentication" and "Slow clients"):

- MLflow refuses an anonymous registration (401), and a wrong password; the replicas' user
  reads, and may not add a version to a model it did not create nor move its alias (403).
- MLflow refuses a version whose ``source`` its validation regex does not match (a local path,
  an http URL), at registration, before the controller ever sees it.
- Slow clients (headers sent a byte at a time, as slowloris does) on the controller's published
  port hold HAProxy's connections, not the controller's: ``/healthz`` keeps answering while
  hundreds are open, and HAProxy cuts them at its header timeout.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import statistics
import time
from typing import Any

import httpx
from compose_output import expect, ok
from compose_scenario import MODEL
from compose_stack import Stack

CREATE_MODEL = "/api/2.0/mlflow/registered-models/create"
DELETE_MODEL = "/api/2.0/mlflow/registered-models/delete"
CREATE_VERSION = "/api/2.0/mlflow/model-versions/create"
SET_ALIAS = "/api/2.0/mlflow/registered-models/alias"
# docker-compose.yml's name for the serving replicas' MLflow user (reads only).
SERVING_USER = "sigserve-serving"
PROBE_MODEL = "sigserve-check-guards"
# As many slow connections as this, or the file-descriptor limit allows.
SLOW_CLIENTS = 500
# HAProxy's `timeout http-request` (deploy/compose/controller-proxy.cfg), and a margin.
HEADER_TIMEOUT_S = 10.0


def _serving_password(stack: Stack) -> str:
    """The replicas' MLflow password, as the `mlflow` container holds it (it makes the user)."""
    from compose_isolation import SECRETS_DIR, _exec

    _, out = _exec(stack, "mlflow", "cat", f"{SECRETS_DIR}/mlflow_serving_password")
    return out.strip()


def mlflow_authentication(stack: Stack) -> None:
    body = {"name": PROBE_MODEL}
    with httpx.Client(base_url=stack.mlflow, timeout=30) as anonymous:
        r = anonymous.post(CREATE_MODEL, json=body)
        expect(r.status_code == 401, f"anonymous registration: {r.status_code} {r.text[:200]}")
        wrong = anonymous.post(CREATE_MODEL, json=body, auth=(stack.registrar[0], "not-it-" * 3))
        expect(wrong.status_code == 401, f"a wrong password: {wrong.status_code}")
        health = anonymous.get("/health")
        expect(health.status_code == 200, f"/health without a user: {health.status_code}")
    reader = (SERVING_USER, _serving_password(stack))
    with httpx.Client(base_url=stack.mlflow, timeout=30, auth=reader) as serving:
        read = serving.get("/api/2.0/mlflow/registered-models/get", params={"name": MODEL})
        expect(read.status_code == 200, f"the replicas' user reading: {read.status_code}")
        version = serving.post(CREATE_VERSION, json={"name": MODEL, "source": "models:/m-0"})
        alias = serving.post(SET_ALIAS, json={"name": MODEL, "alias": "serving", "version": "3"})
        for what, r in (("adding a version", version), ("moving the alias", alias)):
            expect(
                r.status_code == 403,
                f"the replicas' user {what} of {MODEL}: {r.status_code} {r.text[:200]}",
            )
    ok(
        "MLflow: an anonymous registration 401, a wrong password 401, /health open; the "
        f"replicas' user ({SERVING_USER}) reads {MODEL} (200), and may not add a version to "
        "it nor move its alias (403)"
    )


def source_validation(stack: Stack) -> None:
    refused: dict[str, Any] = {}
    with httpx.Client(base_url=stack.mlflow, timeout=30, auth=stack.registrar) as registrar:
        r = registrar.post(CREATE_MODEL, json={"name": PROBE_MODEL})
        expect(r.status_code == 200, f"the registrar creating a model: {r.status_code} {r.text}")
        try:
            for source in ("file:///etc", "http://198.51.100.7/model", "s3://foreign/x"):
                r = registrar.post(CREATE_VERSION, json={"name": PROBE_MODEL, "source": source})
                refused[source] = (r.status_code, r.json().get("error_code"))
                expect(
                    r.status_code == 400 and "Invalid model version source" in r.text,
                    f"a version with source={source}: {r.status_code} {r.text[:300]}",
                )
        finally:
            registrar.request("DELETE", DELETE_MODEL, json={"name": PROBE_MODEL})
    ok(f"MLflow refuses versions by their source at registration: {refused}")


def _slow_clients(port: int, count: int) -> list[socket.socket]:
    opened = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: controller\r\n")
        opened.append(s)
    return opened


def slow_clients(stack: Stack) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    count = min(SLOW_CLIENTS, soft - 200)
    started = time.monotonic()
    sockets = _slow_clients(stack.ports["controller"], count)
    opened_s = time.monotonic() - started
    latencies: list[float] = []
    answers: list[int] = []
    cut: dict[socket.socket, tuple[float, bytes]] = {}
    selector = selectors.DefaultSelector()
    for s in sockets:
        selector.register(s, selectors.EVENT_READ)
    try:
        # One more header byte on every socket a second, /healthz asked in between, until
        # HAProxy has cut them all (at its header timeout) or well past it.
        while len(cut) < count and time.monotonic() - started < HEADER_TIMEOUT_S + 10:
            for s in sockets:
                if s not in cut:
                    with contextlib.suppress(OSError):  # cut: the read below tells
                        s.sendall(b"X")
            for key, _ in selector.select(timeout=0):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    said = s.recv(64)
                except OSError:
                    said = b""
                cut[s] = (time.monotonic() - started, said.split(b"\r\n")[0])
                selector.unregister(s)
            asked = time.monotonic()
            r = httpx.get(f"{stack.controller}/healthz", timeout=10)
            latencies.append(time.monotonic() - asked)
            answers.append(r.status_code)
            time.sleep(1.0)
    finally:
        selector.close()
        for s in sockets:
            s.close()
    expect(all(a == 200 for a in answers), f"/healthz behind the proxy answered {answers}")
    expect(
        len(cut) == count,
        f"{count - len(cut)} of {count} slow connections still open after "
        f"{time.monotonic() - started:.0f} s",
    )
    said = sorted({line.decode(errors="replace") or "(closed)" for _, line in cut.values()})
    after = sorted(t for t, _ in cut.values())
    figures = {
        "slow_clients": count,
        "fd_limit": soft,
        "opened_s": opened_s,
        "healthz_answers": len(answers),
        "healthz_median_ms": statistics.median(latencies) * 1000,
        "healthz_max_ms": max(latencies) * 1000,
        "cut_first_s": after[0],
        "cut_last_s": after[-1],
        "proxy_said": said,
    }
    stack.figures["slow_clients"] = figures
    ok(
        f"{count} slow clients (headers a byte a second; opened in {opened_s:.1f} s; fd limit "
        f"{soft}) on the controller's port: /healthz answered 200 {len(answers)} times "
        f"meanwhile (median {figures['healthz_median_ms']:.0f} ms, max "
        f"{figures['healthz_max_ms']:.0f} ms); HAProxy cut all of them between "
        f"{after[0]:.1f} s and {after[-1]:.1f} s ({', '.join(said)})"
    )

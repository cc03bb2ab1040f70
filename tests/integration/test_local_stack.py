"""`make up` brings the whole stack up on free ports (gRPC on, its default), and Ctrl-C leaves no
process behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import psutil
import pytest

from serving.grpc_protocol import grpc_predict_v2_pb2 as pb
from serving.grpc_protocol.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from sigserve.ports import WINDOW, free_port, port_window
from tests.integration.conftest import wait_for
from tests.unit.test_controller_http import EVENT, delivery

REPO = Path(__file__).resolve().parents[2]


def processes_with_home(home: Path) -> list[int]:
    """Pids whose environment carries this stack's SIGSERVE_HOME: everything it started."""
    marker = f"SIGSERVE_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def listeners(pids: list[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every TCP socket these processes listen on."""
    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            name = " ".join(process.cmdline()[:1]) or process.name()
            sockets = process.net_connections(kind="tcp")
        except psutil.Error:
            continue  # gone meanwhile
        found += [(pid, name, c.laddr.ip, c.laddr.port) for c in sockets
                  if c.status == psutil.CONN_LISTEN]
    return sorted(set(found))


USER_WEBHOOK_SECRET = "a-secret-the-user-chose-for-mlflow"


@pytest.fixture()
def stack_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="up-", dir="/tmp"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_make_up_serves_demo_models_and_ctrl_c_stops_everything(stack_home: Path) -> None:
    ports = {"MLFLOW": free_port(), "SERVING": free_port(), "CONTROLLER": free_port(),
             "METRICS": free_port(), "GRPC": free_port()}
    # Where Ray Serve's own gRPC servers behind HAProxy listen, so that the test knows them.
    grpc_window, fallback_grpc = port_window(), free_port()
    env = {
        **os.environ,
        "SIGSERVE_HOME": str(stack_home),
        "HF_HUB_OFFLINE": "1",
        **{f"SIGSERVE_{k}_PORT": str(v) for k, v in ports.items()},
        # A secret the user chose (an MLflow webhook configured elsewhere signs with it) wins
        # over the one the stack would generate.
        "SIGSERVE_WEBHOOK_SECRET": USER_WEBHOOK_SECRET,
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(fallback_grpc),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc_window),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc_window + WINDOW - 1),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (stack_home / "up.log").open("wb")
    make = subprocess.Popen(["make", "-s", "up"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    serving = f"http://127.0.0.1:{ports['SERVING']}"
    try:
        wait_for(lambda: "sigserve is up" in (stack_home / "up.log").read_text(errors="replace")
                 or make.poll() is not None, 400, 1.0)
        output = (stack_home / "up.log").read_text(errors="replace")
        assert make.poll() is None, output
        assert "Admin token" in output and "curl" in output
        assert "tiny random-weight T5" in output  # the Hub is unreachable here, and it says so

        def embedding() -> httpx.Response | None:
            r = httpx.post(f"{serving}/models/minilm_embeddings/serve",
                           json={"text": "a cat sits on the mat"}, timeout=60)
            return r if r.status_code == 200 else None

        r = wait_for(embedding, 120, 1.0)
        assert len(r.json()[0]["embedding"]) == 384
        refused = httpx.post(f"{serving}/models/translation_model/versions/3/serve",
                             json={"prompt": "Hello"}, timeout=30)
        assert refused.status_code == 409
        with grpc.insecure_channel(f"127.0.0.1:{ports['GRPC']}") as channel:
            live = GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=30)
        assert live.live
        controller = f"http://127.0.0.1:{ports['CONTROLLER']}/webhooks/mlflow"
        generated = json.loads((stack_home / "secrets.json").read_text())["webhook_secret"]
        for secret, status in ((USER_WEBHOOK_SECRET, 200), (generated, 401)):
            body, headers = delivery(EVENT, delivery_id=f"d-{status}", secret=secret)
            assert httpx.post(controller, content=body, headers=headers).status_code == status
        assert processes_with_home(stack_home)

        # Ray's GCS, raylet, workers and agents, MLflow, the controller, the serving port: on
        # 127.0.0.1 only. Ray Serve binds two things to every interface whatever the node's
        # address (docs/security.md): HAProxy's stats and Prometheus frontends, and each
        # replica's inter-deployment gRPC server. With gRPC on, HAProxy's gRPC frontend is on
        # 127.0.0.1 like HTTP's, but Ray binds the gRPC servers behind it to every interface
        # too ([::] hard-coded): each ingress replica's direct-ingress one and the fallback
        # proxy's.
        listening = listeners(processes_with_home(stack_home))
        exposed = [entry for entry in listening if entry[2] not in LOOPBACK]
        print(f"local stack: {len(listening)} listening sockets, {len(exposed)} not on "
              f"loopback: {exposed}")
        haproxy = [e for e in exposed if e[1].endswith("/haproxy")]
        replicas = [e for e in exposed if e[1].startswith("ray::ServeReplica")]
        assert len(haproxy) <= 2 and ports["SERVING"] not in {e[3] for e in haproxy}, exposed
        assert ports["GRPC"] not in {e[3] for e in haproxy}, exposed
        ingress = [e for e in replicas if grpc_window <= e[3] < grpc_window + WINDOW]
        # One inter-deployment server a replica, and at most one direct-ingress gRPC server.
        assert len(replicas) - len(ingress) == len({e[0] for e in replicas}), exposed
        assert len(ingress) == len({e[0] for e in ingress}), exposed
        proxy = [e for e in exposed if e[1].startswith("ray::ProxyActor")]
        assert {e[3] for e in proxy} <= {fallback_grpc}, exposed
        assert sorted(haproxy + replicas + proxy) == exposed, exposed
        assert any(e[2] in LOOPBACK and e[3] == ports["GRPC"] for e in listening), listening
        assert any(e[2] in LOOPBACK and e[1].endswith("gcs_server") for e in listening)
    finally:
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        started = time.monotonic()
        try:
            make.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
        log.close()
    wait_for(lambda: not processes_with_home(stack_home), 30, 0.5)
    assert time.monotonic() - started < 30 + 5
    for port in ports.values():
        with socket.socket() as s:  # nothing listens any more
            assert s.connect_ex(("127.0.0.1", port)) != 0

"""The serving app on a real two-node Ray cluster, deployed by ``sigserve serve``.

Two ``ray start`` processes on this machine, as a user starts a cluster: a head (1 CPU, the fast
path's environment, Ray's token authentication) and a worker node that joins it with its own
temp dir and a ``second_node`` resource. ``sigserve serve --address auto`` (as in a head
container) deploys the app with ``SIGSERVE_REPLICA_RESOURCES={"second_node": ...}``, so every
model replica runs on the second node, and exits; the app keeps serving. Against it: a
registered version answers through the real controller and MLflow server, a breaking one is
409, the same over gRPC (``SIGSERVE_GRPC_PORT``: the Open Inference Protocol's service, which
``sigserve serve`` starts since 9e3045b) as the answer and ``FAILED_PRECONDITION``; with the
controller stopped the replica on node 2 keeps answering, also a new replica started during the
outage (static stability, as ``test_resilience`` checks on the local Ray), and running
``sigserve serve`` again redeploys with new settings.

Ray registers each node under this machine's own address even when told 127.0.0.1 (it resolves
loopback to a routable address); every packet stays on this machine. The test's requests go to
127.0.0.1.

Everything started here is stopped here: each node is a ``ray start --block`` in a session of
its own, and teardown kills the processes of those two sessions only (never ``ray stop``, which
would stop every Ray on the machine, the test session's own included).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sigserve.ports import free_port, port_window
from sigserve.processes import ManagedProcess
from sigserve.stack import fast_path_env
from tests.integration.conftest import (
    ControllerHandle,
    register_echo,
    serve_status,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
APP = "sigserve"


def _session_members(sid: int) -> list[int]:
    """Pids of the processes in session ``sid``: a node's raylet, GCS, agents and Ray workers.

    Ray's workers (Serve's controller, the replicas, HAProxy) each take a process group of their
    own, so the node's process group misses them; they stay in the session ``ray start`` began.
    """
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after "pid (comm)": state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


class RayNode:
    """One ``ray start --block``: its own session, stopped by killing that session's pids."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.process = ManagedProcess(name, argv, env=env, log_path=log)

    def start(self, timeout_s: float = 120.0) -> None:
        self.process.start()
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in self.process.log_tail(200):
            if not self.process.running():
                raise AssertionError(f"{self.process.name} exited:\n{self.process.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.process.name} did not start:\n"
                                     f"{self.process.log_tail()}")
            time.sleep(0.3)

    def stop(self) -> None:
        sid = self.process.pid
        if sid is None:
            return
        # SIGKILL at once: a raylet given SIGTERM drains for 30 s, and nothing here is kept.
        # Twice: a worker the raylet was starting during the first sweep is caught by the second.
        for _ in range(2):
            for pid in _session_members(sid):
                if pid != sid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        self.process.stop(timeout_s=5)

    def leftovers(self) -> list[int]:
        return [] if self.process.pid is None else _session_members(self.process.pid)


@dataclass
class Cluster:
    address: str  # the head's GCS, as `ray start --address` and `sigserve serve` take it
    root: Path
    env: dict[str, str]  # what a driver needs to join: the auth token
    serving_port: int
    grpc_port: int
    nodes: list[RayNode]

    def rss_mb(self) -> float:
        """Resident memory of every process of both nodes (raylets, GCS, agents, workers)."""
        kb = 0
        for node in self.nodes:
            for pid in node.leftovers():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                kb += sum(int(line.split()[1]) for line in status.splitlines()
                          if line.startswith("VmRSS:"))
        return kb / 1024

    def probe(self, command: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "tests.integration.cluster_probe", self.address, command, APP],
            env=self.env, capture_output=True, text=True, timeout=120,
            cwd=Path(__file__).parents[2],
        )
        assert done.returncode == 0, done.stderr[-3000:]
        found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return found


def _clean_env() -> dict[str, str]:
    """This process's environment without what would point Ray or the replicas elsewhere.

    MLflow's and Hugging Face's variables are taken out too, so that a replica finds the
    registry only because ``sigserve serve`` forwards them, as on a cluster whose nodes never
    had them.
    """
    return {
        k: v for k, v in os.environ.items()
        if not k.startswith(("RAY_", "MLFLOW_", "HF_", "SIGSERVE_", "TRANSFORMERS_"))
    }


@pytest.fixture(scope="module")
def cluster(home: Path) -> Iterator[Cluster]:
    root = home / "cluster"
    token = secrets.token_hex(32)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    # The fast path, as a cluster is started for it: in every node's environment before
    # `ray start`. Its ports are this test's own, so it runs beside the session's local Ray.
    # HAProxy's files go to a directory named after this session's home: unique per test run.
    node_env = {**_clean_env(), **auth, **fast_path_env(home)}
    gcs_port = free_port()
    address = f"{HOST}:{gcs_port}"

    def ports(*flags: str) -> list[str]:
        return [a for f in flags for a in (f, str(free_port()))]

    # Ray's default worker-port range is the same for every node; two nodes on one machine
    # each get half of a window of their own.
    base = port_window()

    def worker_ports(offset: int) -> list[str]:
        low = base + offset
        return ["--min-worker-port", str(low), "--max-worker-port", str(low + 99)]

    common = ["--block", "--node-ip-address", HOST, "--num-cpus", "1", "--disable-usage-stats"]
    per_node = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
    head = RayNode("ray head", [
        str(VENV_BIN / "ray"), "start", "--head", *common, "--port", str(gcs_port),
        # Ray's default temp dir under `root` (RAY_TMPDIR=root), where `ray start` records the
        # cluster's address for `--address auto`.
        "--temp-dir", str(root / "ray"), "--include-dashboard", "false",
        *ports(*per_node, "--dashboard-port", "--ray-client-server-port"), *worker_ports(0),
    ], node_env, root / "head.log")  # fmt: skip
    worker = RayNode("ray worker", [
        str(VENV_BIN / "ray"), "start", "--address", address, *common,
        "--resources", json.dumps({"second_node": 1}), "--temp-dir", str(root / "w"),
        *ports(*per_node), *worker_ports(100),
    ], node_env, root / "worker.log")  # fmt: skip
    started = time.monotonic()
    try:
        head.start()
        worker.start()
        print(f"\ntwo-node cluster up in {time.monotonic() - started:.1f} s")
        yield Cluster(address=address, root=root, env={**_clean_env(), **auth},
                      serving_port=free_port(), grpc_port=free_port(), nodes=[head, worker])
    finally:
        worker.stop()
        head.stop()
    time.sleep(0.5)
    left = [p for n in (worker, head) for p in n.leftovers()]
    assert not left or all(_is_zombie(p) for p in left), f"left running: {left}"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@dataclass
class Deployed:
    url: str
    output: str
    seconds: float


def sigserve_serve(cluster: Cluster, ctl: ControllerHandle, **settings: str) -> Deployed:
    """``sigserve serve`` run as a user runs it; it must exit 0 with the app left running."""
    env = {
        **cluster.env,
        "MLFLOW_TRACKING_URI": ctl.tracking_uri,
        "HF_HUB_OFFLINE": "1",
        "SIGSERVE_CONTROLLER_URL": ctl.url,
        "SIGSERVE_SERVING_TOKEN": ctl.secrets.serving_token,
        # Half of node 2's resource per replica: autoscaling may add a second, on node 2 too.
        "SIGSERVE_REPLICA_RESOURCES": json.dumps({"second_node": 0.5}),
        "SIGSERVE_AUTOSCALING_MIN_REPLICAS": "1",
        "SIGSERVE_AUTOSCALING_MAX_REPLICAS": "2",
        # `--address auto` finds the head `ray start` recorded under Ray's temp dir, as in a
        # head container; here that dir is the test's own.
        "RAY_TMPDIR": str(cluster.root),
        "SIGSERVE_GRPC_PORT": str(cluster.grpc_port),
        **{f"SIGSERVE_{k.upper()}": v for k, v in settings.items()},
    }
    # HeadOnly: both nodes share this machine's address, and a second HAProxy would find the
    # serving port taken. A real cluster keeps the default (every node serves).
    argv = [str(VENV_BIN / "sigserve"), "serve", "--address", "auto",
            "--http-port", str(cluster.serving_port), "--proxy-location", "HeadOnly",
            "--timeout", "240"]
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-4000:]}"
    print(f"\nsigserve serve: {seconds:.1f} s\n{done.stdout}")
    return Deployed(url=f"http://{HOST}:{cluster.serving_port}", output=done.stdout,
                    seconds=seconds)


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, controller_handle: ControllerHandle) -> Deployed:
    return sigserve_serve(cluster, controller_handle)


def test_serve_deploys_onto_the_cluster_and_a_replica_on_node_2_answers(
    cluster: Cluster, deployed: Deployed, ctl: ControllerHandle
) -> None:
    # What it printed: where it serves, and the replica on the second node.
    found = cluster.probe("replicas")
    assert found["status"] == "RUNNING"
    assert found["second_node"], "the worker node joined"
    assert [r["node_id"] for r in found["replicas"]] == [found["second_node"]]
    assert f":{cluster.serving_port}" in deployed.output
    # What `auto` found: this head (recorded under the node's address, not 127.0.0.1).
    assert re.search(rf"Ray cluster at \S+:{cluster.address.rsplit(':', 1)[1]} ", deployed.output)
    assert found["second_node"] in deployed.output
    # Autoscaling and placement as configured, as Serve itself reports the deployment.
    config = found["deployment_config"]
    assert config["autoscaling_config"]["min_replicas"] == 1
    assert config["autoscaling_config"]["max_replicas"] == 2
    actor = config["ray_actor_options"]
    assert actor["resources"] == {"second_node": 0.5}
    assert actor["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"] == ctl.tracking_uri
    assert actor["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"

    # The command has exited; the app keeps serving a version registered after it did.
    name = "cluster_echo"
    register_echo(name, tag="one")
    register_echo(name, tag="bad", input_label="text")
    wait_for(lambda: ctl.state_of(name, "2") == "quarantined", 60)
    ok = wait_for(lambda: (r := serve_status(deployed.url, name, "1")).status_code == 200 and r,
                  90, 0.25)
    assert ok.json() == [{"answer": "one:hi"}]
    refused = wait_for(lambda: (r := serve_status(deployed.url, name, "2")).status_code == 409
                       and r, 30, 0.25)
    assert any("'prompt'" in reason for reason in refused.json()["reasons"])
    models = httpx.get(f"{deployed.url}/models", timeout=10).json()
    assert name in json.dumps(models)

    # gRPC, on the port sigserve serve was given and names: the same answer and the same gate.
    assert re.search(rf"gRPC\s+\S+:{cluster.grpc_port}\s", deployed.output), deployed.output
    answer, code, details = _grpc_infer(cluster.grpc_port, name, "1")
    assert (answer, code) == ([b"one:hi"], None), details
    answer, code, details = _grpc_infer(cluster.grpc_port, name, "2")
    assert code == "FAILED_PRECONDITION" and "'prompt'" in details, (code, details)
    print(f"\ncluster RSS with one replica and one model loaded: {cluster.rss_mb():.0f} MB")


def _grpc_infer(port: int, name: str, version: str) -> tuple[list[bytes], str | None, str]:
    """``ModelInfer`` of ``prompt=["hi"]`` on the cluster's gRPC port: the answer's contents,
    the status code's name (None: OK) and its details (the output's name when OK)."""
    import grpc

    from serving.grpc_protocol import grpc_predict_v2_pb2 as pb
    from serving.grpc_protocol import grpc_predict_v2_pb2_grpc as pb_grpc

    prompt = pb.ModelInferRequest.InferInputTensor(
        name="prompt", datatype="BYTES", shape=[1],
        contents=pb.InferTensorContents(bytes_contents=[b"hi"]),
    )
    request = pb.ModelInferRequest(model_name=name, model_version=version, inputs=[prompt])
    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # HAProxy takes the replica's gRPC server into its backend once a health check passed.
        wait_for(lambda: _grpc_live(stub), 60, 0.5)
        try:
            response = stub.ModelInfer(request, timeout=30)
        except grpc.RpcError as exc:
            return [], exc.code().name, exc.details() or ""
    [output] = response.outputs
    return list(output.contents.bytes_contents), None, output.name


def _grpc_live(stub: Any) -> bool:
    import grpc

    from serving.grpc_protocol import grpc_predict_v2_pb2 as pb

    try:
        return bool(stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live)
    except grpc.RpcError:
        return False


def test_static_stability_on_node_2_with_the_controller_down(
    cluster: Cluster, deployed: Deployed, ctl: ControllerHandle
) -> None:
    name = "cluster_stable"
    register_echo(name, tag="one")
    register_echo(name, tag="bad", input_label="text")
    wait_for(lambda: ctl.state_of(name, "2") == "quarantined", 60)
    wait_for(lambda: serve_status(deployed.url, name, "2").status_code == 409, 90, 0.25)
    ctl.stop()

    # The running replica answers from the table it holds.
    assert serve_status(deployed.url, name, "1").json() == [{"answer": "one:hi"}]
    assert serve_status(deployed.url, name, "2").status_code == 409

    # A replica that starts during the outage, on node 2 again, answers from the GCS copy.
    killed = cluster.probe("kill-replicas")
    old = {r["id"] for r in killed["replicas"]}
    assert old and {r["node_id"] for r in killed["replicas"]} == {killed["second_node"]}

    def replaced() -> dict[str, Any] | None:
        now = cluster.probe("replicas")
        running = [r for r in now["replicas"] if r["state"] == "RUNNING"]
        fresh = running and not ({r["id"] for r in running} & old)
        return now if fresh else None

    now = wait_for(replaced, 120, 1.0)
    assert {r["node_id"] for r in now["replicas"]} == {now["second_node"]}
    ok = wait_for(lambda: (r := serve_status(deployed.url, name, "1")).status_code == 200 and r,
                  90, 0.25)
    assert ok.json() == [{"answer": "one:hi"}]
    refused = serve_status(deployed.url, name, "2")
    assert refused.status_code == 409
    assert any("'prompt'" in reason for reason in refused.json()["reasons"])


def test_serve_again_redeploys_with_new_settings(
    cluster: Cluster, deployed: Deployed, ctl: ControllerHandle
) -> None:
    name = "cluster_redeploy"
    register_echo(name, tag="one")
    wait_for(lambda: serve_status(deployed.url, name, "1").status_code == 200, 90, 0.25)
    before = {r["id"] for r in cluster.probe("replicas")["replicas"]}

    again = sigserve_serve(cluster, ctl, autoscaling_max_replicas="3")

    # It returned once the new config ran: Serve reports it, on replicas started for it.
    found = cluster.probe("replicas")
    assert found["deployment_config"]["autoscaling_config"]["max_replicas"] == 3
    running = [r for r in found["replicas"] if r["state"] == "RUNNING"]
    assert running and not ({r["id"] for r in running} & before)
    assert {r["node_id"] for r in running} == {found["second_node"]}
    assert serve_status(again.url, name, "1").json() == [{"answer": "one:hi"}]


def test_serve_without_a_cluster_starts_none(tmp_path: Path) -> None:
    env = {**_clean_env(), "HOME": str(tmp_path)}
    no_address = subprocess.run([str(VENV_BIN / "sigserve"), "serve"], env=env,
                                capture_output=True, text=True, timeout=60)
    assert no_address.returncode == 1
    assert "RAY_ADDRESS" in no_address.stderr

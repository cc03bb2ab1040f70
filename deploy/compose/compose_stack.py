"""The demo's compose project as the check drives it: its settings and free host ports, ``up``
watched container by container until every service is healthy, and the tear-down."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from compose_docker import REPO, project_filter, run
from compose_output import CheckFailed, ok, say

LONG_RUNNING = (
    "postgres", "mlflow", "mlflow-gateway", "controller", "controller-proxy", "ray-head",
    "ray-worker",
)
ONE_SHOT = ("init-secrets", "serve", "register")
SERVICES = (*LONG_RUNNING, *ONE_SHOT)
PORTS = ("serving", "controller", "mlflow", "grpc")
# docker-compose.yml's name for the `register` job's MLflow user.
REGISTRAR = "sigserve-registrar"


@dataclass
class ServiceState:
    status: str  # running, exited, restarting...
    health: str | None  # healthy, starting, unhealthy, None without a healthcheck
    exit_code: int
    restarts: int


@dataclass
class Stack:
    compose: list[str]
    project: str
    env: dict[str, str]
    ports: dict[str, int]  # serving, controller, mlflow, grpc -> the host's port
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def serving(self) -> str:
        return f"http://127.0.0.1:{self.ports['serving']}"

    @property
    def controller(self) -> str:
        return f"http://127.0.0.1:{self.ports['controller']}"

    @property
    def mlflow(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    @property
    def token(self) -> str:
        return self.env["SIGSERVE_ADMIN_TOKEN"]

    @property
    def registrar(self) -> tuple[str, str]:
        """The MLflow user that registers (the demo's `register` job's), and its password."""
        return REGISTRAR, self.env["SIGSERVE_MLFLOW_REGISTRAR_PASSWORD"]

    def compose_argv(self, *args: str) -> list[str]:
        return [*self.compose, "-p", self.project, *args]

    def run(self, *args: str, timeout: float | None = 900, capture: bool = True) -> str:
        return run(self.compose_argv(*args), env=self.env, timeout=timeout, capture=capture).stdout

    def down(self, *args: str) -> None:
        """Containers, network and volumes of the project (what an interrupted run left, too)."""
        self.run("down", "-v", "--remove-orphans", *args, timeout=300)

    def containers(self) -> dict[str, str]:
        """Service name -> container id, stopped containers included."""
        out = run(
            [
                "docker",
                "ps",
                "-a",
                *project_filter(self.project),
                "--format",
                '{{.Label "com.docker.compose.service"}} {{.ID}}',
            ]
        ).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def states(self) -> dict[str, ServiceState]:
        ids = self.containers()
        if not ids:
            return {}
        out = run(["docker", "inspect", *ids.values()]).stdout
        by_id = {c["Id"]: c for c in json.loads(out)}
        states = {}
        for service, cid in ids.items():
            info = next(v for k, v in by_id.items() if k.startswith(cid))
            st = info["State"]
            health = st.get("Health")
            states[service] = ServiceState(
                status=st["Status"],
                health=health["Status"] if health else None,
                exit_code=int(st.get("ExitCode", 0)),
                restarts=int(info.get("RestartCount", 0)),
            )
        return states

    def logs(self, service: str, tail: int = 60) -> str:
        argv = self.compose_argv("logs", "--no-color", "--tail", str(tail), service)
        return run(argv, env=self.env, check=False).stdout

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.controller, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_stack(
    compose: list[str],
    *,
    project: str,
    base_image: str,
    wheelhouse: str,
    app_image: str,
    postgres_image: str,
) -> Stack:
    """The project on free host ports, with the settings compose substitutes into the file."""
    ports = {name: free_port() for name in PORTS}
    env = {
        **os.environ,
        "BASE_IMAGE": base_image,
        "WHEELHOUSE": wheelhouse,
        "SIGSERVE_IMAGE": app_image,
        "SIGSERVE_POSTGRES_IMAGE": postgres_image,
        "SIGSERVE_SERVING_PORT": str(ports["serving"]),
        "SIGSERVE_CONTROLLER_PORT": str(ports["controller"]),
        "SIGSERVE_MLFLOW_PORT": str(ports["mlflow"]),
        "SIGSERVE_GRPC_PORT": str(ports["grpc"]),
        "SIGSERVE_BIND": "127.0.0.1",
        # Generated here, so the check can call the admin API; the others are
        # generated inside the stack. Never written to the repository.
        "SIGSERVE_ADMIN_TOKEN": secrets.token_urlsafe(24),
        # The same for the MLflow user that registers: the check registers from the host.
        "SIGSERVE_MLFLOW_REGISTRAR_PASSWORD": secrets.token_urlsafe(24),
        # New versions must reach the controller by webhook within the check; its
        # periodic resync would also find them, so it is pushed out of the way.
        "SIGSERVE_RESYNC_INTERVAL_S": "600",
        # No Hub here: the demo's tiny T5 at once, not after a 3 s probe.
        "HF_HUB_OFFLINE": "1",
    }
    return Stack(compose=compose, project=project, env=env, ports=ports)


def up(stack: Stack, timeout_s: float) -> None:
    """``compose up -d`` while watching every container; the times each became healthy."""
    started = time.monotonic()
    argv = stack.compose_argv("up", "-d", "--no-build")
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - read after the process ends
    proc = subprocess.Popen(argv, env=stack.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    seen: dict[str, float] = {}
    try:
        while True:
            now = time.monotonic() - started
            states = stack.states()
            for service, st in states.items():
                done = st.health == "healthy" or (st.status == "exited" and st.exit_code == 0)
                if done and service not in seen:
                    seen[service] = now
                    what = "healthy" if st.health else "done"
                    say(f"  {now:6.1f} s  {service} {what}")
                if service in ONE_SHOT and st.status == "exited" and st.exit_code != 0:
                    raise CheckFailed(f"{service} exited {st.exit_code}:\n{stack.logs(service)}")
                if service in LONG_RUNNING and (
                    st.status in ("exited", "dead") or st.health == "unhealthy" or st.restarts
                ):
                    raise CheckFailed(
                        f"{service} is {st.status}/{st.health} (restarts {st.restarts}):\n"
                        f"{stack.logs(service)}"
                    )
            if proc.poll() not in (None, 0):
                log.seek(0)
                raise CheckFailed(f"`compose up` exited {proc.returncode}:\n{log.read()[-3000:]}")
            if all(s in seen for s in SERVICES):
                break
            if now > timeout_s:
                missing = [s for s in SERVICES if s not in seen]
                raise CheckFailed(f"not up after {timeout_s:.0f} s: {', '.join(missing)}")
            time.sleep(0.5)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.terminate()
        log.close()
    stack.figures["healthy_s"] = max(seen[s] for s in LONG_RUNNING)
    stack.figures["demo_ready_s"] = seen["register"]
    stack.figures["healthy_at"] = seen


def tear_down(stack: Stack) -> None:
    """``compose down -v``, then a look for volumes of the project that outlived it."""
    stack.down("-t", "10")
    left = run(["docker", "volume", "ls", "-q", *project_filter(stack.project)]).stdout.split()
    ok("containers, network and volumes removed" if not left else f"volumes left: {left}")

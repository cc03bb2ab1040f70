"""`make compose-check`: build the compose demo, bring it up, run the scenario from the host, tear
it all down (volumes too), also on failure or Ctrl-C.

Steps, each timed:
1. Docker: a daemon (``../shared/tools/local-base-image.sh`` starts one where none answers) and
   a compose command (``docker compose``, else ``docker-compose``, installed from Debian's
   packages when missing and run as root).
2. Images: the base (``--base-image``; the stand-in ``sigserve-local/python:3.11`` is built by
   the shared script when missing), the wheelhouse (``deploy/compose/wheelhouse.sh``, skipped
   while ``requirements.lock`` is unchanged), then ``compose build``.
3. ``compose up`` under a project name of its own, on free host ports, with a generated admin
   token; the time until every service is healthy and until the demo models are decided.
4. The scenario from the host: v1 live by default, v2 by header, v3 409 with reasons, the
   embedding model, a pin through the admin API (and a pin to v3 refused); a version
   registered from the host after start going live through MLflow's webhook to the controller
   container and the long-poll to the Ray containers (the decision's audit event names the
   webhook delivery); the controller container restarted: serving answers meanwhile, and
   afterwards every decision is the one made before (same states, reasons and decision times,
   no new audit events) and a version registered after the restart goes live too.
5. Figures: build time, time to healthy, where the serving replicas run, memory of each
   container (``docker stats --no-stream``), image sizes.
6. ``compose down -v``: containers, network and volumes.

Run from the repository's top with its venv: ``.venv/bin/python deploy/compose/check.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
SHARED_BASE_SCRIPT = REPO.parent / "shared" / "tools" / "local-base-image.sh"
WHEELHOUSE_SCRIPT = REPO / "deploy" / "compose" / "wheelhouse.sh"
LOCAL_BASE = "sigserve-local/python:3.11"
APP_IMAGE = "sigserve:compose-check"
POSTGRES_IMAGE = "sigserve-postgres:compose-check"
LONG_RUNNING = ("postgres", "mlflow", "controller", "ray-head", "ray-worker")
ONE_SHOT = ("init-secrets", "serve", "register")
MODEL = "translation_model"
EMBEDDINGS = "minilm_embeddings"
JSON = {"content-type": "application/json"}


class CheckFailed(Exception):
    pass


# --- output ------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, flush=True)


def ok(message: str) -> None:
    say(f"  ✓ {message}")


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    say(f"\n== {title}")
    started = time.monotonic()
    yield
    say(f"  ({time.monotonic() - started:.1f} s)")


def run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv,
        env=env,
        text=True,
        capture_output=capture,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip()[-3000:] if capture else ""
        raise CheckFailed(f"`{' '.join(argv)}` exited {result.returncode}\n{detail}")
    return result


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    """Call ``probe`` until it returns something truthy; that value, or CheckFailed."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout_s:.0f} s waiting for {what} ({last!r})")
        time.sleep(every_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- docker and compose ------------------------------------------------------------------------


def ensure_docker() -> None:
    if shutil.which("docker") and run(["docker", "info"], check=False).returncode == 0:
        ok("docker daemon answers")
        return
    if not SHARED_BASE_SCRIPT.is_file():
        raise CheckFailed("no docker daemon answers (and no shared script to start one)")
    say(f"  no docker daemon answers: {SHARED_BASE_SCRIPT.name} installs and starts one")
    run(["bash", str(SHARED_BASE_SCRIPT)], capture=False)
    run(["docker", "info"])
    ok("docker daemon started")


def compose_command() -> list[str]:
    if run(["docker", "compose", "version"], check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise CheckFailed("neither `docker compose` nor `docker-compose` is installed")
        say("  installing Debian's docker-compose")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "install", "-y", "-q", "docker-compose"], env=env, timeout=600)
    return ["docker-compose"]


def image_size_mb(tag: str) -> float:
    out = run(["docker", "image", "inspect", "-f", "{{.Size}}", tag]).stdout.strip()
    return int(out) / 1e6


def image_exists(tag: str) -> bool:
    return run(["docker", "image", "inspect", tag], check=False).returncode == 0


def ensure_base_image(tag: str) -> None:
    if image_exists(tag):
        ok(f"base image {tag} present")
        return
    if tag != LOCAL_BASE:
        ok(f"base image {tag} will be pulled by the build")
        return
    if not SHARED_BASE_SCRIPT.is_file():
        raise CheckFailed(f"{tag} is missing and {SHARED_BASE_SCRIPT} is not there to build it")
    run(["bash", str(SHARED_BASE_SCRIPT), tag], capture=False, timeout=1800)
    ok(f"base image {tag} built")


def ensure_wheelhouse(directory: Path) -> None:
    """Fill ``directory`` unless it was filled for this very requirements.lock."""
    stamp = directory / ".filled-for"
    digest = hashlib.sha256(
        (REPO / "requirements.lock").read_bytes() + WHEELHOUSE_SCRIPT.read_bytes()
    ).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == digest:
        ok(f"wheelhouse {directory.name}/ is current ({len(list(directory.glob('*.whl')))} wheels)")
        return
    python = REPO / ".venv" / "bin" / "python"
    env = {**os.environ, **({"PYTHON": str(python)} if python.exists() else {})}
    run(["bash", str(WHEELHOUSE_SCRIPT), str(directory)], env=env, capture=False, timeout=3600)
    stamp.write_text(digest + "\n")
    ok(f"wheelhouse {directory.name}/ filled")


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
    serving: str
    controller: str
    mlflow: str
    token: str
    figures: dict[str, Any] = field(default_factory=dict)

    def run(self, *args: str, timeout: float | None = 900, capture: bool = True) -> str:
        argv = [*self.compose, "-p", self.project, *args]
        return run(argv, env=self.env, timeout=timeout, capture=capture).stdout

    def containers(self) -> dict[str, str]:
        """Service name -> container id, stopped containers included."""
        out = run(
            [
                "docker",
                "ps",
                "-a",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
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
        argv = [
            *self.compose,
            "-p",
            self.project,
            "logs",
            "--no-color",
            "--tail",
            str(tail),
            service,
        ]
        return run(argv, env=self.env, check=False).stdout

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.controller, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )


# --- bringing it up ----------------------------------------------------------------------------


def up(stack: Stack, timeout_s: float) -> None:
    """``compose up -d`` while watching every container; the times each became healthy."""
    started = time.monotonic()
    argv = [*stack.compose, "-p", stack.project, "up", "-d", "--no-build"]
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
            if all(s in seen for s in (*LONG_RUNNING, *ONE_SHOT)):
                break
            if now > timeout_s:
                missing = [s for s in (*LONG_RUNNING, *ONE_SHOT) if s not in seen]
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


# --- the scenario ------------------------------------------------------------------------------


def describe(stack: Stack, name: str) -> dict[str, Any]:
    r = httpx.get(f"{stack.serving}/models/{name}", timeout=10)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def states_of(described: dict[str, Any]) -> dict[str, str]:
    return {str(v["version"]): str(v["state"]) for v in described["versions"]}


def predict(
    stack: Stack, body: Any, *, version: str | None = None, header: str | None = None
) -> httpx.Response:
    path = f"/models/{MODEL}/versions/{version}/serve" if version else f"/models/{MODEL}/serve"
    headers = {**JSON, **({"serve_multiplexed_model_id": header} if header else {})}
    return httpx.post(f"{stack.serving}{path}", json=body, headers=headers, timeout=60)


def scenario_notebook(stack: Stack) -> None:
    model = describe(stack, MODEL)
    states = states_of(model)
    expect(model["default_version"] == "1", f"default version {model['default_version']}, not 1")
    expect(states.get("1") == "live" and states.get("2") == "live", f"states {states}")
    ok(f"{MODEL}: default v1, states {states}")

    r = predict(stack, {"prompt": "Hello, my name is Jon."})
    expect(r.status_code == 200, f"v1 by default: {r.status_code} {r.text[:300]}")
    expect("translation_text" in r.json()[0], f"v1 answer {r.text[:200]}")
    ok(f"v1 by default: 200 {r.text[:70]}")

    r = predict(stack, [{"prompt": "Hello"}, {"prompt": "Bye"}], header="2")
    expect(r.status_code == 200 and len(r.json()) == 2, f"v2 by header: {r.status_code} {r.text}")
    ok("v2 by header (two records): 200, two answers")

    r = predict(stack, {"prompt": "Hello"}, version="3")
    problem = r.json()
    expect(r.status_code == 409, f"v3: {r.status_code} {r.text[:300]}")
    expect(r.headers["content-type"].startswith("application/problem+json"), "v3: not problem+json")
    expect(bool(problem.get("reasons")), f"v3's 409 has no reasons: {problem}")
    ok(f"v3: 409 with reasons: {problem['reasons'][0]!r}")

    r = httpx.post(
        f"{stack.serving}/models/{EMBEDDINGS}/serve",
        json={"text": "a cat"},
        headers=JSON,
        timeout=60,
    )
    expect(r.status_code == 200 and len(r.json()[0]["embedding"]) > 100, f"{EMBEDDINGS}: {r.text}")
    ok(f"{EMBEDDINGS}: 200, a {len(r.json()[0]['embedding'])}-dimensional embedding")

    r = httpx.get(f"{stack.controller}/admin/models/{MODEL}", timeout=10)
    expect(r.status_code == 401, f"admin API without the token: {r.status_code}")
    with stack.admin() as admin:
        r = admin.put(f"/admin/models/{MODEL}/default", json={"version": "3"})
        expect(r.status_code == 409, f"pin to v3 without force: {r.status_code} {r.text[:300]}")
        ok("admin API: 401 without the token; a pin to v3 is refused (409)")
        r = admin.put(f"/admin/models/{MODEL}/default", json={"version": "2"})
        expect(r.status_code == 200, f"pin v2: {r.status_code} {r.text[:300]}")
    pinned_at = time.monotonic()
    wait_for(
        "serving to take the pin", lambda: describe(stack, MODEL)["default_version"] == "2", 30
    )
    stack.figures["pin_to_serving_s"] = time.monotonic() - pinned_at
    r = predict(stack, {"prompt": "Hello"})
    expect(r.status_code == 200, f"default after the pin: {r.status_code} {r.text[:300]}")
    ok(
        f"pin to v2 (admin API): serving's default is v2 after "
        f"{stack.figures['pin_to_serving_s']:.2f} s, and answers 200"
    )


def register_version(stack: Stack, work: Path) -> tuple[str, float]:
    """Register a new translation version from the host; (version, when it was created)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from sigserve.demo.register import DEMO_EXPERIMENT, log_translation_version
    from sigserve.demo.tiny_t5 import build_tiny_t5

    mlflow.set_tracking_uri(stack.mlflow)
    experiment = MlflowClient().get_experiment_by_name(DEMO_EXPERIMENT)
    if experiment is None:
        raise CheckFailed(f"no experiment {DEMO_EXPERIMENT} in MLflow")
    hf_dir = work / "tiny-t5"
    # MLflow's and transformers' prints and progress bars go to a file, not between the lines.
    with (
        (work / "registration.log").open("a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        if not hf_dir.exists():
            build_tiny_t5(hf_dir)
        version = log_translation_version(
            MODEL,
            lang_to="de",
            input_label="prompt",
            hf_dir=hf_dir,
            experiment_id=str(experiment.experiment_id),
        )
    return version, time.monotonic()


def decision_actor(stack: Stack, version: str) -> str | None:
    with stack.admin() as admin:
        r = admin.get(f"/admin/models/{MODEL}/events", params={"limit": 100})
        r.raise_for_status()
    for event in r.json()["events"]:
        if event["kind"] == "decision" and event["version"] == version:
            return str(event["actor"])
    return None


def new_version_goes_live(stack: Stack, work: Path, label: str) -> None:
    version, created = register_version(stack, work)

    def live() -> bool:
        return states_of(describe(stack, MODEL)).get(version) == "live"

    wait_for(f"v{version} to be live in serving", live, 120, every_s=0.05)
    to_live = time.monotonic() - created
    wait_for(
        f"a 200 from v{version}",
        lambda: predict(stack, {"prompt": "Hi"}, version=version).status_code == 200,
        180,
        every_s=0.2,
    )
    to_200 = time.monotonic() - created
    actor = decision_actor(stack, version) or ""
    expect(actor.startswith("webhook:"), f"v{version} was decided by {actor!r}, not a webhook")
    stack.figures[f"{label}_to_live_s"] = to_live
    stack.figures[f"{label}_to_200_s"] = to_200
    ok(
        f"v{version} registered from the host: live in serving {to_live:.2f} s after it was "
        f"created, first 200 after {to_200:.2f} s; decided by {actor.split(':')[0]} "
        f"delivery {actor.split(':', 1)[1][:12]}..."
    )


def decisions(stack: Stack) -> dict[str, Any]:
    """What the controller holds: defaults, states, reasons, decision times, audit event ids."""
    snapshot: dict[str, Any] = {}
    with stack.admin() as admin:
        for name in (MODEL, EMBEDDINGS):
            r = admin.get(f"/admin/models/{name}")
            r.raise_for_status()
            body = r.json()
            events = admin.get(f"/admin/models/{name}/events", params={"limit": 500})
            events.raise_for_status()
            snapshot[name] = {
                "default": body["default_version"],
                "versions": {
                    v["version"]: (v["state"], v.get("reasons"), v.get("decided_at"))
                    for v in body["versions"]
                },
                "events": [e["id"] for e in events.json()["events"]],
            }
    return snapshot


def controller_restart(stack: Stack) -> None:
    before = decisions(stack)
    started = time.monotonic()
    stack.run("restart", "controller", timeout=120)
    # The controller is starting again: serving answers from the table it holds.
    r = predict(stack, {"prompt": "While the controller restarts"})
    expect(r.status_code == 200, f"serving during the controller's restart: {r.status_code}")

    def ready() -> bool:
        return httpx.get(f"{stack.controller}/readyz?full=true", timeout=5).status_code == 200

    wait_for("the controller to be ready again", ready, 180, every_s=0.2)
    stack.figures["controller_restart_s"] = time.monotonic() - started
    after = decisions(stack)
    expect(after == before, f"decisions changed across the restart:\n{before}\n{after}")
    versions = sum(len(m["versions"]) for m in after.values())
    ok(
        f"controller restarted (ready again in {stack.figures['controller_restart_s']:.1f} s); "
        f"serving answered 200 meanwhile; all {versions} decisions, both defaults and the audit "
        "log are as before (nothing decided again)"
    )


def replica_nodes(stack: Stack) -> list[str]:
    lines = re.findall(r"replica\s+\S+\s+(\S+) on node (\S+)", stack.logs("serve", tail=50))
    return [f"{state}@{node}" for state, node in lines]


# --- figures -----------------------------------------------------------------------------------


def memory_table(stack: Stack) -> list[tuple[str, str, str]]:
    names = run(
        [
            "docker",
            "ps",
            "--filter",
            f"label=com.docker.compose.project={stack.project}",
            "--format",
            "{{.Names}}",
        ]
    ).stdout.split()
    if not names:
        return []
    out = run(
        [
            "docker",
            "stats",
            "--no-stream",
            "--format",
            "{{.Name}}\t{{.MemUsage}}\t{{.CPUPerc}}",
            *names,
        ]
    ).stdout
    rows = []
    for line in sorted(out.splitlines()):
        name, mem, cpu = line.split("\t")
        rows.append(
            (
                name.removeprefix(f"{stack.project}_").removeprefix(f"{stack.project}-"),
                mem.split(" / ")[0],
                cpu,
            )
        )
    return rows


def print_figures(stack: Stack, build_s: float | None) -> None:
    f = stack.figures
    say("\n== Figures")
    if build_s is not None:
        say(f"  image build (compose build)          {build_s:7.1f} s")
    if "healthy_s" in f:
        say(f"  compose up -> every service healthy  {f['healthy_s']:7.1f} s")
        say(f"  compose up -> demo models decided    {f['demo_ready_s']:7.1f} s")
    for key, label in (
        ("pin_to_serving_s", "admin pin -> serving's default"),
        ("webhook_to_live_s", "version created -> live in serving"),
        ("webhook_to_200_s", "version created -> its first 200"),
        ("controller_restart_s", "controller restart -> ready"),
        ("after_restart_to_live_s", "after the restart: created -> live"),
    ):
        if key in f:
            say(f"  {label:<37}{f[key]:7.2f} s")
    if f.get("replicas"):
        say(f"  serving replicas                     {', '.join(f['replicas'])}")
    if f.get("memory"):
        say("  memory per container (docker stats --no-stream):")
        total = 0.0
        for name, mem, cpu in f["memory"]:
            say(f"    {name:<28}{mem:>12}   cpu {cpu}")
            total += _mib(mem)
        say(f"    {'total':<28}{total:>9.0f}MiB")
    for tag in (APP_IMAGE, POSTGRES_IMAGE):
        if image_exists(tag):
            say(f"  image {tag:<32}{image_size_mb(tag):7.0f} MB")


def _mib(text: str) -> float:
    number = float(re.sub(r"[^0-9.]", "", text) or 0)
    unit = re.sub(r"[0-9. ]", "", text)
    return number * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "B": 1 / 2**20}.get(unit, 1)


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--base-image",
        default=LOCAL_BASE,
        help=f"BASE_IMAGE of the builds (default {LOCAL_BASE}, built when missing)",
    )
    p.add_argument(
        "--wheelhouse",
        default="wheelhouse",
        help="wheelhouse directory under the repository (default wheelhouse)",
    )
    p.add_argument(
        "--from-pypi",
        action="store_true",
        help="install from PyPI inside the build instead of a wheelhouse",
    )
    p.add_argument("--cold", action="store_true", help="build without the layer cache")
    p.add_argument("--project", default="sigserve-compose-check", help="compose project name")
    p.add_argument("--timeout", type=float, default=900, help="seconds for the stack to come up")
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the stack up at the end (for a look; `down -v` it yourself)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)

    build_s: float | None = None
    stack: Stack | None = None
    failed: str | None = None
    work = Path(tempfile.mkdtemp(prefix="sigserve-compose-check-"))
    try:
        with step("Docker"):
            ensure_docker()
            compose = compose_command()
            version = run([*compose, "version"]).stdout.splitlines()[0]
            ok(f"compose: {' '.join(compose)} ({version})")
        with step("Images"):
            ensure_base_image(args.base_image)
            wheelhouse = "" if args.from_pypi else args.wheelhouse
            if wheelhouse:
                ensure_wheelhouse(REPO / wheelhouse)
            ports = {name: free_port() for name in ("serving", "controller", "mlflow")}
            env = {
                **os.environ,
                "BASE_IMAGE": args.base_image,
                "WHEELHOUSE": wheelhouse,
                "SIGSERVE_IMAGE": APP_IMAGE,
                "SIGSERVE_POSTGRES_IMAGE": POSTGRES_IMAGE,
                "SIGSERVE_SERVING_PORT": str(ports["serving"]),
                "SIGSERVE_CONTROLLER_PORT": str(ports["controller"]),
                "SIGSERVE_MLFLOW_PORT": str(ports["mlflow"]),
                "SIGSERVE_BIND": "127.0.0.1",
                # Generated here, so the check can call the admin API; the others are
                # generated inside the stack. Never written to the repository.
                "SIGSERVE_ADMIN_TOKEN": secrets.token_urlsafe(24),
                # New versions must reach the controller by webhook within the check; its
                # periodic resync would also find them, so it is pushed out of the way.
                "SIGSERVE_RESYNC_INTERVAL_S": "600",
                # No Hub here: the demo's tiny T5 at once, not after a 3 s probe.
                "HF_HUB_OFFLINE": "1",
            }
            stack = Stack(
                compose=compose,
                project=args.project,
                env=env,
                serving=f"http://127.0.0.1:{ports['serving']}",
                controller=f"http://127.0.0.1:{ports['controller']}",
                mlflow=f"http://127.0.0.1:{ports['mlflow']}",
                token=env["SIGSERVE_ADMIN_TOKEN"],
            )
            # Whatever an earlier, interrupted run left under this project name.
            stack.run("down", "-v", "--remove-orphans", timeout=300)
            started = time.monotonic()
            out = stack.run("build", *(["--no-cache"] if args.cold else []), timeout=3600)
            build_s = time.monotonic() - started
            steps, cached = len(re.findall(r"^Step \d+/", out, re.M)), out.count("Using cache")
            layers = f"; {cached} of {steps} steps from the layer cache" if steps else ""
            ok(f"images built in {build_s:.1f} s ({'--no-cache' if args.cold else 'warm'}{layers})")
        with step(f"compose up (project {args.project}, ports {ports})"):
            up(stack, args.timeout)
            ok(
                f"every service healthy {stack.figures['healthy_s']:.1f} s after `up`; demo "
                f"models registered and decided after {stack.figures['demo_ready_s']:.1f} s"
            )
            stack.figures["replicas"] = replicas = replica_nodes(stack)
            if replicas:
                nodes = {r.split("@")[1] for r in replicas}
                expect(len(nodes) == 2, f"serving replicas not on both Ray nodes: {replicas}")
                ok(f"serving replicas on both Ray nodes: {', '.join(replicas)}")
            else:
                say("  ? `serve` printed no replica lines; where the replicas run is not checked")
        with step("The notebook's scenario, from the host"):
            scenario_notebook(stack)
        with step("A version registered after start goes live through the webhook"):
            new_version_goes_live(stack, work, "webhook")
        with step("The controller container restarted keeps its decisions"):
            controller_restart(stack)
            new_version_goes_live(stack, work, "after_restart")
        stack.figures["memory"] = memory_table(stack)
    except CheckFailed as exc:
        failed = str(exc)
    except KeyboardInterrupt as exc:
        failed = f"interrupted ({exc or 'Ctrl-C'})"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        if stack is not None:
            if failed and "memory" not in stack.figures:
                stack.figures["memory"] = memory_table(stack)
            print_figures(stack, build_s)
            if args.keep:
                say(f"\nLeft up (--keep): {' '.join(stack.compose)} -p {stack.project} down -v")
            else:
                with step("compose down -v"):
                    stack.run("down", "-v", "--remove-orphans", "-t", "10", timeout=300)
                    left = run(
                        [
                            "docker",
                            "volume",
                            "ls",
                            "-q",
                            "--filter",
                            f"label=com.docker.compose.project={stack.project}",
                        ]
                    ).stdout.split()
                    ok(
                        "containers, network and volumes removed"
                        if not left
                        else f"volumes left: {left}"
                    )
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        say(f"\nFAILED: {failed}")
        return 1
    say("\ncompose-check: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

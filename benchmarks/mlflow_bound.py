"""The bound on decisions per second that MLflow itself sets: the reads one decision needs.

    .venv/bin/python benchmarks/mlflow_bound.py [--workers 1] [--threads 8] [--models 100]
        [--versions 10] [--writes]

Starts an ``mlflow server`` alone, as the stack starts it (``sigserve.stack.mlflow_server``:
SQLite, local artifacts) but with ``--workers`` uvicorn workers, logs one small model from code
(``benchmarks/models/upper.py``) and registers it ``--models`` x ``--versions`` times, with no
webhook (nothing else loads the server). Then, from ``--threads`` threads, each (model, version)
gets exactly the reads a reconcile pass makes to decide one new version
(``controller/reconciler.py``), through the controller's own ``controller.registry.Registry``:

- ``model``: ``get_registered_model`` (creation time, aliases, tags);
- ``versions``: ``search_model_versions`` for the model's name (paged);
- ``artifact``: the download URI, the listing, MLmodel, requirements.txt and python_env.yaml,
  and the manifest's hashes of the small files (``controller/artifact_files.py``,
  ``artifact_manifest.py``).

``--writes`` adds what the controller writes back per decided version (three ``sigserve.*``
tags per version, the default alias once per model: ``controller/registry_sync.py``), for the
bound with its writes. Each thread takes one model at a time, its versions in order, as the
controller's passes do.
Prints decisions/s, the time per kind of call (mean and p95), and the server's CPU.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import psutil
from bench_stack import log_upper_model

from sigserve.ports import free_port
from sigserve.stack import Secrets, mlflow_server

HOST = "127.0.0.1"


def log_and_register(tracking_uri: str, models: int, versions: int, threads: int) -> list[str]:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    info = log_upper_model(tracking_uri)
    client = MlflowClient(tracking_uri)
    names = [f"bound_{m:04d}" for m in range(models)]

    def register(name: str) -> None:
        client.create_registered_model(name)
        for _ in range(versions):
            client.create_model_version(name, info.model_uri, model_id=info.model_id)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(register, names))
    return names


def server_cpu_s(root: int) -> float:
    procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    return float(sum(p.cpu_times().user + p.cpu_times().system for p in procs))


def measure(tracking_uri: str, root: int, names: list[str], versions: int, threads: int,
            writes: bool, cold: bool = False) -> None:
    from controller.registry import Registry
    from controller.registry_artifacts import ArtifactCache, Locations

    local = threading.local()
    took: dict[str, list[float]] = defaultdict(list)
    lock = threading.Lock()

    def registry() -> Registry:
        if not hasattr(local, "registry"):
            local.registry = Registry(tracking_uri)
        reg: Registry = local.registry
        return reg

    def timed(kind: str, call: Callable[[], Any]) -> None:
        started = time.perf_counter()
        call()
        spent = time.perf_counter() - started
        with lock:
            took[kind].append(spent)

    def decide(name: str) -> None:
        # One model at a time per thread, its versions in order, as the controller's passes go
        # (two alias writes on one model at once can fail in MLflow: a unique-key race).
        reg = registry()
        for version in (str(v) for v in range(1, versions + 1)):
            timed("model", lambda: reg.model(name))
            timed("versions", lambda: reg.versions(name))
            if cold:  # every version read in full, as before the controller kept artifacts
                reg.artifacts, reg._locations = ArtifactCache(), Locations()
            timed("artifact", partial(reg.artifact, name, version))
            if writes:
                for key in ("sigserve.state", "sigserve.reasons", "sigserve.decided_at"):
                    timed("write tag", partial(reg.set_version_tag, name, version, key, "x"))
        if writes:
            timed("write alias", lambda: reg.set_alias(name, "serving", str(versions)))

    # A few models first, so each thread's client and MLflow's caches are warm.
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decide, names[:threads]))
    took.clear()
    measured = names[threads:]
    cpu_before, started = server_cpu_s(root), time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decide, measured))
    wall = time.monotonic() - started
    cpu = server_cpu_s(root) - cpu_before
    decided = len(measured) * versions
    print(f"{decided} decisions' reads{' and writes' if writes else ''} from {threads} threads "
          f"in {wall:.1f} s: {decided / wall:.1f} decisions/s; MLflow server CPU "
          f"{100 * cpu / wall:.0f}% of one core")  # fmt: skip
    for kind, spent in took.items():
        ordered = sorted(spent)
        print(f"  {kind:12s} {len(spent) / decided:.1f} per decision, mean "
              f"{1000 * statistics.fmean(spent):.1f} ms, p95 "
              f"{1000 * ordered[int(0.95 * (len(ordered) - 1))]:.1f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="the MLflow server's workers")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--writes", action="store_true", help="add the write-back per version")
    parser.add_argument("--cold", action="store_true",
                        help="read every version's artifact in full (the reads before cb6d48f; "
                             "by default a version of an artifact read before is read as its "
                             "MLmodel alone, controller/registry_artifacts.py)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bound-", dir="/tmp"))
    port = free_port()
    server = mlflow_server(home, host=HOST, port=port,
                           encryption_key=Secrets.load_or_create(home).mlflow_encryption_key)
    server.argv[server.argv.index("--workers") + 1] = str(args.workers)
    tracking_uri = f"http://{HOST}:{port}"
    try:
        server.start().wait_healthy(180)
        assert server.pid is not None
        started = time.monotonic()
        names = log_and_register(tracking_uri, args.models, args.versions, args.threads)
        print(f"MLflow server, {args.workers} worker(s): registered {args.models} x "
              f"{args.versions} versions in {time.monotonic() - started:.1f} s", flush=True)
        measure(tracking_uri, server.pid, names, args.versions, args.threads, args.writes,
                args.cold)
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

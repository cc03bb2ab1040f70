"""Many versions of one model on a small per-replica cache: cold loads and memory. Run on purpose.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/many_versions.py \
        [--versions 50] [--ballast-mb 20] [--max-models 2] [--warm 3] [--spread 200]

Starts its own stack on free ports under a temp home (as ``registration_latency.py`` does), with
the serving app's ``max_num_models_per_replica=--max-models``. Logs one trivial pyfunc
(``benchmarks/models/upper.py``: ``prompt`` upper-cased into ``output``) holding a
``--ballast-mb`` numpy array loaded from an artifact file, and registers it ``--versions`` times
(all compatible). Once the controller lists every version live:

1. first touch: for v = 1..N, one request to ``POST /models/{name}/versions/{v}/serve`` (a cold
   load: no request has named v before), then ``--warm`` more to v. After every 10 versions it
   prints the cold-load latency (p50/p95 of those 10 and of all so far), the warm latency, and
   the memory (PSS) of the Ray worker processes (``ray::*``): their sum now, the serving app's
   replicas (``ray::ServeReplica:sigserve:*``) alone, and the largest sum seen by a sampler
   reading them every second (and at each report);
2. spread: ``--spread`` requests to versions drawn at random over all N. A request counts as cold
   when its version is not among the ``--max-models`` most recently requested (what an LRU of
   that size on one replica holds); cold and warm latency are printed apart, and the number of
   loads the serving app reports, when it can be asked.

With a bounded cache the workers' memory stays near baseline + max-models x ballast; an unbounded
one grows by a ballast per version.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from bench_stack import running_stack
from registration_latency import _descendants, _pss_mb
from serving_throughput import exit_on_sigterm, memory_report, ray_label

UPPER_MODEL = Path(__file__).resolve().parent / "models" / "upper.py"
# The replicas of the serving app, whichever deployment holds the models.
SIGSERVE_REPLICAS = "ray::ServeReplica:sigserve:"
BODY = [{"prompt": "hi"}]


@dataclass(frozen=True)
class Sample:
    at: float
    workers_mb: float  # every ray:: process
    sigserve_mb: float  # the serving app's replicas (ray::ServeReplica:sigserve:*)


class MemorySampler:
    """Reads the PSS of the Ray worker processes (``ray::*`` under this process) every second."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)

    def sample(self) -> Sample:
        workers = replicas = 0.0
        for pid in _descendants(os.getpid()):
            label = ray_label(pid)
            if not label.startswith("ray::"):
                continue
            mb = _pss_mb(pid)
            workers += mb
            if label.startswith(SIGSERVE_REPLICAS):
                replicas += mb
        return Sample(time.monotonic(), workers, replicas)

    def record(self) -> Sample:
        """A sample now, kept with the periodic ones (so a short stretch has one too)."""
        taken = self.sample()
        self.samples.append(taken)
        return taken

    def _run(self) -> None:
        while not self._stop.is_set():
            self.record()
            self._stop.wait(self.interval_s)

    def max_since(self, since: float) -> float:
        return max((s.workers_mb for s in self.samples if s.at >= since), default=float("nan"))

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


def pct(xs: list[float], p: int) -> float:
    """The p-th percentile in ms (inclusive method: fine for a handful of points)."""
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return 1000 * xs[0]
    return 1000 * statistics.quantiles(xs, n=100, method="inclusive")[p - 1]


def dist(xs: list[float]) -> str:
    return f"p50 {pct(xs, 50):7.0f} ms  p95 {pct(xs, 95):7.0f} ms  (n={len(xs)})"


def wait_all_live(
    client: httpx.Client, serving: str, name: str, count: int, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    live = 0
    while time.monotonic() < deadline:
        try:
            r = client.get(f"{serving}/models/{name}")
            if r.status_code == 200:
                versions = r.json().get("versions", [])
                live = sum(v.get("state") == "live" for v in versions)
                if live >= count:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{name}: {live} of {count} versions live after {timeout_s:.0f}s")


def runner_loads() -> int | None:
    """How many loads the serving app reports: a deployment of app ``sigserve`` with a
    ``loads()`` method (a list of the model ids it loaded). None when none answers (the serving
    internals change; this is a cross-check only)."""
    from ray import serve

    try:
        deployments = list(serve.status().applications["sigserve"].deployments)
    except Exception as exc:
        print(f"  (no Serve status for app sigserve: {type(exc).__name__}: {exc})")
        return None
    for deployment in deployments:
        try:
            handle = serve.get_deployment_handle(deployment, app_name="sigserve")
            return len(handle.loads.remote().result(timeout_s=30))
        except Exception:  # noqa: S112 - this deployment has no loads(): try the next
            continue
    print(f"  (no deployment of app sigserve ({', '.join(deployments)}) reports its loads)")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--ballast-mb", type=float, default=20.0)
    parser.add_argument("--max-models", type=int, default=2, help="max_num_models_per_replica")
    parser.add_argument("--warm", type=int, default=3, help="requests after each first touch")
    parser.add_argument("--spread", type=int, default=200, help="random requests over all")
    parser.add_argument("--every", type=int, default=10, help="print every this many versions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    exit_on_sigterm()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    started_at = datetime.now(UTC)
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    command = shlex.join([sys.executable, *sys.argv])
    print(f"many versions, {started_at:%Y-%m-%d %H:%M} UTC, nproc {nproc}")
    print(f"command: {command}", flush=True)

    sampler = MemorySampler()
    client = httpx.Client(timeout=120)
    with running_stack("bench-versions-", max_num_models_per_replica=args.max_models) as stack:
        home, serving = stack.home, stack.serving_url
        try:
            import mlflow
            import numpy as np
            import pandas as pd
            from mlflow.models import infer_signature

            ballast = home / "ballast.npy"
            values = int(args.ballast_mb * 2**20 / 8)
            # Random, so no page of it is shared or zero: each loaded copy costs its full size.
            np.save(ballast, np.random.default_rng(args.seed).random(values))
            name = "bench_many"
            example = pd.DataFrame({"prompt": ["hi"]})
            t0 = time.monotonic()
            with mlflow.start_run(run_name=f"{name} ({args.ballast_mb:g} MB ballast)"):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(UPPER_MODEL),
                    artifacts={"ballast": str(ballast)},
                    pip_requirements=["mlflow", "pandas", "numpy"],
                    signature=infer_signature(example, pd.DataFrame({"output": ["HI"]})),
                    input_example=example,
                )
            for _ in range(args.versions):
                mlflow.register_model(info.model_uri, name)
            print(
                f"logged one model ({ballast.stat().st_size / 2**20:.0f} MB ballast) "
                "and registered "
                f"it {args.versions} times as {name} in {time.monotonic() - t0:.0f}s",
                flush=True,
            )
            t0 = time.monotonic()
            wait_all_live(client, serving, name, args.versions, 900)
            print(f"all {args.versions} versions live in {time.monotonic() - t0:.0f}s", flush=True)

            failures: list[int] = []  # versions that answered anything but 200

            def post(version: int) -> float:
                started = time.monotonic()
                r = client.post(f"{serving}/models/{name}/versions/{version}/serve", json=BODY)
                took = time.monotonic() - started
                if r.status_code != 200:
                    failures.append(version)
                    print(f"  v{version}: {r.status_code} {r.text[:200]}", flush=True)
                return took

            base = sampler.record()
            sampler.start()
            print(
                f"before any request: Ray workers {base.workers_mb:.0f} MB "
                f"(sigserve replicas {base.sigserve_mb:.0f} MB)"
            )
            print(
                f"\nfirst touch of each version (max_num_models_per_replica={args.max_models}, "
                f"{args.warm} warm requests after each cold one):"
            )
            cold: list[float] = []
            warm: list[float] = []
            block_started = time.monotonic()
            block_cold: list[float] = []
            block_warm: list[float] = []
            for v in range(1, args.versions + 1):
                block_cold.append(post(v))
                block_warm += [post(v) for _ in range(args.warm)]
                if v % args.every == 0 or v == args.versions:
                    cold += block_cold
                    warm += block_warm
                    now = sampler.record()
                    print(
                        f"v{v - len(block_cold) + 1:>2}-{v:<2} cold {dist(block_cold)} | all cold "
                        f"{dist(cold)} | warm p50 {pct(block_warm, 50):.1f} ms"
                    )
                    print(
                        f"       Ray workers now {now.workers_mb:6.0f} MB (sigserve replicas "
                        f"{now.sigserve_mb:5.0f} MB), "
                        f"max {sampler.max_since(block_started):6.0f} MB "
                        f"in this block, {sampler.max_since(0):6.0f} MB so far "
                        f"(+{now.workers_mb - base.workers_mb:.0f} MB over baseline)",
                        flush=True,
                    )
                    block_started = time.monotonic()
                    block_cold, block_warm = [], []

            if args.spread > 0:
                rng = random.Random(args.seed)  # noqa: S311 - a reproducible draw, not a secret
                # What an LRU of max-models holds after the first touches: the last ones touched.
                first = max(1, args.versions - args.max_models + 1)
                lru: OrderedDict[int, None] = OrderedDict(
                    (v, None) for v in range(first, args.versions + 1)
                )
                spread_cold: list[float] = []
                spread_warm: list[float] = []
                spread_started = time.monotonic()
                for _ in range(args.spread):
                    v = rng.randint(1, args.versions)
                    was_loaded = v in lru
                    took = post(v)
                    (spread_warm if was_loaded else spread_cold).append(took)
                    lru[v] = None
                    lru.move_to_end(v)
                    while len(lru) > args.max_models:
                        lru.popitem(last=False)
                now = sampler.record()
                print(
                    f"\nspread: {args.spread} requests over all {args.versions} versions at random"
                )
                print(
                    f"  expected cold (not among the last {args.max_models}): {dist(spread_cold)}"
                )
                print(f"  expected warm:                         {dist(spread_warm)}")
                print(
                    f"  Ray workers now {now.workers_mb:.0f} MB "
                    f"(sigserve replicas {now.sigserve_mb:.0f} MB), "
                    f"max {sampler.max_since(spread_started):.0f} MB during the spread, "
                    f"{sampler.max_since(0):.0f} MB over the whole run"
                )
            loads = runner_loads()
            if loads is not None:
                expected = len(cold) + (len(spread_cold) if args.spread > 0 else 0)
                print(
                    f"  sigserve reports {loads} loads; "
                    f"the client expected {expected} cold requests"
                )

            print(f"\ncold load, all first touches: {dist(cold)}; warm: {dist(warm)}")
            if failures:
                print(
                    f"SUSPICIOUS: {len(failures)} answers were not 200 (versions {failures[:20]})"
                )
            rows = memory_report(
                {
                    "mlflow server (registry)": [stack.mlflow.pid or 0],
                    "controller": [stack.controller.pid or 0],
                }
            )
            print(f"memory (PSS) at the end: {sum(mb for _, mb in rows):.0f} MB in all")
            for label, mb in rows:
                print(f"  {mb:7.0f} MB  {label}")
        finally:
            sampler.stop()
            client.close()


if __name__ == "__main__":
    main()

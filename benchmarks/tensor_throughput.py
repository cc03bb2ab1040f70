"""The numeric tensor model on every protocol, sigserve against Seldon MLServer. Run on purpose.

    .venv/bin/python benchmarks/tensor_throughput.py [--seconds 5] [--rounds 2] [--rows 1]

Starts its own stack (``bench_stack.running_stack``), registers the numeric tensor model of
``v2_throughput.py`` (``row_stats.py``, float32 (-1, 3) -> (-1, 2)), starts MLServer 1.7.1 and
its MLflow runtime on the same version (``mlserver_peer.py``, its venv without torch), and
drives each path with ``wrk`` at 1 connection and 16, ``--rows`` rows per request, the paths
alternating back to back each round, each round starting at the next path: sigserve's
``/serve``, ``/invocations`` (``inputs``) and V2 ``infer``, MLServer's ``/invocations`` and V2
``infer``. Prints req/s medians over rounds,
p50 latency, and each path's ratio to MLServer's path of the same protocol (``/serve`` against
MLServer's ``/invocations``), the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from bench_stack import running_stack
from process_stats import cmdline
from v2_throughput import numeric_with_mlserver
from wrk import Endpoint, run_wrk
from wrk_rounds import drive_rounds, ready_endpoints


def bodies(rows: int) -> dict[str, tuple[str, object]]:
    """label -> (path on its server, body)."""
    data = [[float(i) + 1.0, 2.0, -3.5] for i in range(rows)]
    flat = [v for row in data for v in row]
    v2 = {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [rows, 3], "data": flat}]}
    return {
        "sigserve /serve": ("/models/numeric/serve", {"inputs": data}),
        "sigserve /invocations": ("/models/numeric/invocations", {"inputs": data}),
        "sigserve /v2 infer": ("/v2/models/numeric/infer", v2),
        "mlserver /invocations": ("/invocations", {"inputs": data}),
        "mlserver /v2 infer": ("/v2/models/numeric/infer", v2),
    }


PEERS = {
    "sigserve /serve": "mlserver /invocations",
    "sigserve /invocations": "mlserver /invocations",
    "sigserve /v2 infer": "mlserver /v2 infer",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument(
        "--profile-s", type=float, default=0, help="py-spy the replica this long at the end"
    )
    parser.add_argument(
        "--profile-connections", type=int, default=1, help="connections while py-spy samples"
    )
    parser.add_argument(
        "--profile-dir", type=Path, default=None, help="keep py-spy's raw profiles here"
    )
    args = parser.parse_args()
    with running_stack("bench-tensor-") as stack, contextlib.ExitStack() as peers:
        peer = peers.enter_context(numeric_with_mlserver(stack))
        targets: dict[str, tuple[str, object]] = {
            label: ((peer.url if label.startswith("mlserver") else stack.serving_url) + path, body)
            for label, (path, body) in bodies(args.rows).items()
        }
        endpoints = ready_endpoints(targets, stack.home / "wrk", 120)
        figures = drive_rounds(endpoints, args.rounds, args.seconds)
        if args.profile_s > 0:
            for label in ("sigserve /serve", "sigserve /invocations", "sigserve /v2 infer"):
                connections = args.profile_connections
                print(f"py-spy, the replica, {label} at {connections} connection(s):")
                print(profile_replica(
                    endpoints[label], args.profile_s, connections=connections,
                    keep=args.profile_dir,
                ))  # fmt: skip
        print(f"rows per request: {args.rows}")
        print(f"{'path':24} {'c':>3} {'req/s (median)':>15} {'p50 ms':>7} {'x MLServer':>11}")
        for (label, connections), runs in figures.rps.items():
            ratio = figures.ratio(label, PEERS.get(label, ""), connections)
            latency = statistics.median(figures.p50[(label, connections)])
            print(
                f"{label:24} {connections:>3} {statistics.median(runs):>15.0f} "
                f"{latency:>7.2f} {'-' if ratio is None else f'{ratio:.2f}':>11}"
            )
    sys.stdout.flush()


SAMPLES_PER_S = 500
# Parts of a replica's time, by a frame its samples pass through (inclusive, so they overlap:
# sigserve's code includes MLflow's predict).
PARTS = {
    "sigserve's code (serving/)": "(serving/",
    "MLflow's pyfunc predict": "(mlflow/pyfunc/__init__.py",
    "FastAPI's request handling": "(fastapi/routing.py",
    "uvicorn's send": "(uvicorn/protocols/http/",
    "Ray Serve's replica (ray/serve/)": "(ray/serve/",
}


def replica_pid() -> int:
    """The serving replica's process (Ray's title for it: ``ray::ServeReplica:...``)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and cmdline(int(entry)).startswith("ray::ServeReplica"):
            return int(entry)
    raise RuntimeError("no serving replica found")


def profile_replica(
    endpoint: Endpoint,
    seconds: float,
    top: int = 15,
    connections: int = 1,
    keep: Path | None = None,
) -> str:
    """Where the replica's time goes while ``endpoint`` is driven at ``connections``: py-spy's
    samples, the share of them each frame is on (inclusive), the busiest first; the raw
    profile is kept in ``keep`` when given."""
    out = Path(endpoint.script).with_suffix(".pyspy")
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        out = keep / f"{Path(endpoint.script).stem}-c{connections}.pyspy"
    spy = [
        str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(replica_pid()),
        "-d", f"{seconds:g}", "-r", str(SAMPLES_PER_S), "-f", "raw", "-o", str(out),
        "--nonblocking",
    ]  # fmt: skip
    threads = 1 if connections == 1 else 2
    driver = threading.Thread(target=run_wrk, args=(endpoint, threads, connections, seconds + 1))
    driver.start()
    subprocess.run(spy, capture_output=True, check=True, timeout=seconds + 60)
    driver.join()
    frames: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for frame in set(stack.split(";")):
            frames[frame] += int(count)
        for part, marker in PARTS.items():
            if marker in stack:
                parts[part] += int(count)
    busy = total / (SAMPLES_PER_S * seconds)
    lines = [f"  {total} samples: {busy:.2f} threads busy on average (Python frames only)"]
    for part in PARTS:
        lines.append(f"  {100 * parts[part] / max(total, 1):5.1f}%  under {part}")
    lines.append("  the busiest frames (inclusive):")
    for frame, hits in frames.most_common(top):
        lines.append(f"  {100 * hits / total:5.1f}%  {frame[:150]}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

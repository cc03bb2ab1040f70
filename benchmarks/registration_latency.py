"""Registration -> servable latency on a real local stack. Run on purpose; prints figures.

    .venv/bin/python benchmarks/registration_latency.py [--runs 20] [--path webhook|resync]

Starts its own MLflow server, controller and Ray Serve app on free ports under a temp home,
registers a small model ``--runs`` times and, for each new version, measures:

- webhook receipt -> servable: from the controller's receipt of the version's webhook to the
  first 200 from the serving app for that version (a client polls its path every 5 ms);
- registration -> first 200: from the call to ``mlflow.register_model`` to that first 200.

``--path resync`` registers no webhook with MLflow, so the controller learns of each version
only from its periodic resync (``--resync-interval``, 2 s by default here): the path a lost
delivery takes. Registrations are then spread over the interval at random.

Then prints the memory (PSS) of everything the stack runs (MLflow, controller, Ray), and with
``--throughput S`` the serving throughput of the default version for S seconds at 1 and 16
concurrent clients (an asyncio httpx client on the same machine: compare ratios between builds
measured in one session, not absolute figures).
This machine is shared: compare figures from one run, read the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from datetime import datetime
from pathlib import Path

import httpx
from bench_stack import running_stack

ECHO = Path(__file__).resolve().parents[1] / "tests" / "integration" / "models" / "tagged_echo.py"


def _pss_mb(pid: int) -> float:
    """Proportional set size: shared pages split between their users, so the sum is honest."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _name(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"
    for key in (
        "mlflow server",
        "uvicorn",
        "-m controller",
        "raylet",
        "gcs_server",
        "ServeReplica:sigserve:ModelRunner",
        "ServeReplica:sigserve:Ingress",
        "ServeController",
        "ProxyActor",
        "dashboard",
        "ray::",
    ):
        if key in cmd:
            return key
    return "driver (this script)" if pid == os.getpid() else cmd[:40]


async def _load(url: str, clients: int, seconds: float) -> tuple[int, list[float]]:
    """``clients`` loops posting one record each until ``seconds`` pass; only 200s count."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=10) as client:

        async def one() -> None:
            while time.monotonic() < deadline:
                started = time.monotonic()
                r = await client.post(url, json={"prompt": "hi"})
                if r.status_code == 200:
                    latencies.append(time.monotonic() - started)

        await asyncio.gather(*(one() for _ in range(clients)))
    return len(latencies), latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--throughput", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--path", choices=("webhook", "resync"), default="webhook")
    parser.add_argument("--resync-interval", type=float, default=2.0, metavar="SECONDS")
    args = parser.parse_args()
    by_resync = args.path == "resync"

    with running_stack(
        "bench-",
        resync_interval_s=args.resync_interval if by_resync else 300,
        register_webhook=not by_resync,
    ) as stack:
        ctl_url, serving, admin = stack.controller_url, stack.serving_url, stack.admin
        import mlflow
        import pandas as pd
        from mlflow.models import infer_signature

        name = "bench_echo"
        frame = pd.DataFrame({"prompt": ["x"]})
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(ECHO),
                pip_requirements=[],
                signature=infer_signature(frame, pd.DataFrame({"answer": ["x"]})),
                model_config={"tag": "bench"},
            )
        receipt_to_servable, register_to_200 = [], []
        client = httpx.Client(timeout=10)
        for _ in range(args.runs + 1):
            if by_resync:
                time.sleep(random.uniform(0, args.resync_interval))  # noqa: S311
            started = time.time()
            version = mlflow.register_model(info.model_uri, name).version
            url = f"{serving}/models/{name}/versions/{version}/serve"
            while client.post(url, json={"prompt": "hi"}).status_code != 200:
                time.sleep(0.005)
            servable_at = time.time()
            if version == "1":
                continue  # the first version pays for the model's first load; not counted
            register_to_200.append(servable_at - started)
            line = f"v{version}: registration -> first 200 {1000 * (servable_at - started):6.0f} ms"
            if not by_resync:
                model = client.get(f"{ctl_url}/admin/models/{name}", headers=admin).json()
                # Builds before the registry write-back had only last_webhook_at, in epoch s.
                heard = model.get("last_version_webhook_at", model["last_webhook_at"])
                received_at = (
                    heard if isinstance(heard, float) else datetime.fromisoformat(heard).timestamp()
                )
                receipt_to_servable.append(servable_at - received_at)
                line += (
                    f", webhook receipt -> servable {1000 * (servable_at - received_at):6.0f} ms"
                )
            print(line)

        def summary(xs: list[float]) -> str:
            q = statistics.quantiles(xs, n=20)
            return (
                f"p50 {1000 * statistics.median(xs):.0f} ms, p95 {1000 * q[18]:.0f} ms, "
                f"min {1000 * min(xs):.0f} ms, max {1000 * max(xs):.0f} ms (n={len(xs)})"
            )

        print(
            f"path: {args.path}"
            + (f" (resync every {args.resync_interval:g} s)" if by_resync else "")
        )
        if receipt_to_servable:
            print(f"webhook receipt -> servable:  {summary(receipt_to_servable)}")
        if len(register_to_200) > 1:
            print(f"registration -> first 200:    {summary(register_to_200)}")
        if args.throughput > 0:
            for clients in (1, 16):
                done, latencies = asyncio.run(
                    _load(f"{serving}/models/{name}/serve", clients, args.throughput)
                )
                q = statistics.quantiles(latencies, n=100)
                print(
                    f"throughput, {clients:2d} clients: {done / args.throughput:7.1f} req/s, "
                    f"p50 {1000 * statistics.median(latencies):.1f} ms, p99 {1000 * q[98]:.1f} ms"
                )

        pids = set(_descendants(os.getpid()))
        by_part: dict[str, float] = {}
        for pid in pids:
            by_part[_name(pid)] = by_part.get(_name(pid), 0.0) + _pss_mb(pid)
        print(f"memory of the stack (PSS): {sum(by_part.values()):.0f} MB")
        for part, mb in sorted(by_part.items(), key=lambda kv: -kv[1]):
            print(f"  {mb:7.0f} MB  {part}")


if __name__ == "__main__":
    main()

"""What a rollout costs a request: the serving API with and without one, in one run. On purpose.

    .venv/bin/python benchmarks/rollout_routing.py [--seconds 5] [--rounds 3]

The serving app's HTTP API (``serving.api.create_app``: the real routes, contract, model host and
batcher) runs under uvicorn in this process, once per configuration, each on a port of its own,
with a trivial in-process model (upper-cases one string column, as ``benchmarks/models/upper.py``
does) behind both versions of a model, and the table offered by hand:

- ``none``: no rollout (the path every request took before rollouts);
- ``w0``: a rollout of weight 0 and no shadow: every request routed and counted, all of them
  to the default (the routing's and counting's own cost, batching unchanged);
- ``weight``: a rollout sending half the requests that name no version to the candidate, at
  random (the same, plus two versions' batches of half the size each);
- ``keyed``: the same with a ``sigserve-routing-key`` header (one hash per request; one key, so
  every request goes to one version);
- ``shadow``: weight 0, shadow 1.0: every request is also offered to the candidate after its
  answer, and its shadow runs when the replica is quiet (``serving.rollout_shadow``: no client
  request in flight nor begun in the last 2 ms), else waits, and is dropped after 2 s;
- ``eager``: the same shadow run at once, whatever the clients do (``quiet_s=0``: how every
  shadow ran before they gave way), for the comparison in the same run.

For the two shadow configurations, the shadows compared and dropped in each load's runs are
printed too (a closed loop keeps the replica busy: most are dropped, and the agreement gate
says that too few were compared).

First, the request path's own part in isolation: microseconds per call of the routing and the
counting (``RolloutPath.route`` and ``answered``), timed in a loop. Then ``wrk --latency`` at
``-t1 -c1`` and ``-t2 -c16``; every round runs every configuration back to
back, and the table shows medians over rounds of req/s, p50 and p99, and the median of the
per-round ratios to ``none``. Ray Serve and HAProxy are not in the path here, so a request costs
less than on the stack and a rollout's share of it shows larger: an upper bound of its cost
there. wrk runs on the same 2 cores; compare figures from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import tempfile
import threading
import time
import timeit
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import uvicorn
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema
from wrk import Endpoint, parse_wrk, run_wrk

from serving.api import create_app
from serving.loader import LoadedModel
from serving.model_host import ModelHost
from serving.resolve import Target
from serving.rollout_counts import RolloutCounts
from serving.rollout_path import RolloutPath
from serving.rollout_shadow import Shadows
from serving.table_source import TableSource
from wire.routing_table import (
    ModelEntry,
    Rollout,
    RoutingTable,
    VersionEntry,
    VersionState,
)

SIGNATURE = ModelSignature(
    Schema([ColSpec("string", "prompt")]), Schema([ColSpec("string", "output")])
).to_dict()
BODY = '[{"prompt": "hello"}]'
CONFIGS: dict[str, tuple[Rollout | None, dict[str, str]]] = {
    "none": (None, {}),
    "w0": (Rollout(id="bench", candidate="2", weight=0.0), {}),
    "weight": (Rollout(id="bench", candidate="2", weight=0.5), {}),
    "keyed": (Rollout(id="bench", candidate="2", weight=0.5), {"sigserve-routing-key": "k"}),
    "shadow": (Rollout(id="bench", candidate="2", weight=0.0, shadow=1.0), {}),
    "eager": (Rollout(id="bench", candidate="2", weight=0.0, shadow=1.0), {}),
}
SHADOWED = ("shadow", "eager")
LOADS = ((1, 1), (2, 16))  # wrk threads, connections


class Upper:
    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        return pd.DataFrame({"output": data["prompt"].str.upper()})


def table(rollout: Rollout | None) -> RoutingTable:
    versions = {
        v: VersionEntry(
            version=v, state=VersionState.LIVE, signature=SIGNATURE,
            source=f"models:/m-{v}", mlmodel_digest=v * 64,
        )
        for v in ("1", "2")
    }  # fmt: skip
    model = ModelEntry(
        name="upper", default_version="1", contract=SIGNATURE, versions=versions, rollout=rollout
    )
    return RoutingTable(revision=1, models={"upper": model})


def never(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("no controller in this benchmark", request=request)


def serve(rollout: Rollout | None, port: int, path: RolloutPath) -> uvicorn.Server:
    async def get_model(target: Target) -> LoadedModel:
        # A directory that does not exist: a LoadedModel removes its directory when freed.
        return LoadedModel(Upper(), Path("/nonexistent/sigserve-bench"))

    source = TableSource("http://controller", transport=httpx.MockTransport(never))
    source.offer(table(rollout))
    app = create_app(source, ModelHost(get_model), rollouts=path)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def script(directory: Path, label: str, headers: dict[str, str]) -> Path:
    path = directory / f"{label}.lua"
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lines.append(f"wrk.body = [==[{BODY}]==]")
    path.write_text("\n".join(lines) + "\n")
    return path


def rollout_path(label: str) -> RolloutPath:
    counts = RolloutCounts()
    return RolloutPath(counts, Shadows(counts, quiet_s=0.0) if label == "eager" else None)


def shadow_tally(path: RolloutPath) -> tuple[int, int, int]:
    """(compared, dropped, failed) so far."""
    tally = path.counts.shadow("upper", "bench")
    return tally.compared, tally.dropped, tally.failed


def microseconds() -> None:
    """The routing and counting of one request, alone, per configuration."""
    print(f"{'config':<8} {'route+count us':>15}")
    for label, (rollout, headers) in CONFIGS.items():
        if label in SHADOWED:
            continue  # its cost is the candidate's predict, measured below
        path, routing, calls = RolloutPath(), table(rollout), 200_000

        def one(
            path: RolloutPath = path, routing: RoutingTable = routing, headers: Any = headers
        ) -> None:
            routed = path.route(routing, "upper", headers)
            path.answered("upper", routed, 200, 0.001)

        seconds = min(timeit.repeat(one, number=calls, repeat=3))
        print(f"{label:<8} {seconds / calls * 1e6:>15.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    microseconds()
    directory = Path(tempfile.mkdtemp(prefix="sigserve-rollout-bench-"))
    try:
        measure(args.seconds, args.rounds, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure(seconds: float, rounds: int, directory: Path) -> None:
    endpoints: dict[str, Endpoint] = {}
    paths = {label: rollout_path(label) for label in CONFIGS}
    for label, (rollout, headers) in CONFIGS.items():
        port = free_port()
        serve(rollout, port, paths[label])
        url = f"http://127.0.0.1:{port}/models/upper/serve"
        endpoints[label] = Endpoint(url, BODY, script(directory, label, headers))
    for endpoint in endpoints.values():
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = httpx.post(endpoint.url, content=BODY, timeout=5,
                                    headers={"content-type": "application/json"})  # fmt: skip
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{endpoint.url} did not answer")
            time.sleep(0.1)
    figures: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    # (compared, dropped, failed) of the shadows offered during each configuration's runs.
    shadows: dict[tuple[str, int], list[int]] = {}
    for round_ in range(rounds):
        for threads, connections in LOADS:
            base = None
            for label, endpoint in endpoints.items():
                # Written again before each run: something on this shared machine empties /tmp.
                directory.mkdir(parents=True, exist_ok=True)
                script(directory, label, CONFIGS[label][1])
                before = shadow_tally(paths[label])
                rps, p50, p99, non2xx, errors = parse_wrk(
                    run_wrk(endpoint, threads, connections, seconds)
                )
                # The shadows still queued run or drop within their 2 s once wrk is done.
                time.sleep(2.5 if label in SHADOWED else 0)
                after = shadow_tally(paths[label])
                sums = shadows.setdefault((label, connections), [0, 0, 0])
                for i in range(3):
                    sums[i] += after[i] - before[i]
                if non2xx or errors:
                    print(
                        f"round {round_} {label} c{connections}: {non2xx} non-2xx, {errors} errors"
                    )
                figures.setdefault((label, connections), []).append((rps, p50, p99))
                base = rps if label == "none" else base
                if base:
                    ratios.setdefault((label, connections), []).append(rps / base)
    print(f"\n{'config':<8} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'x none':>7}")
    for _, connections in LOADS:
        for label in endpoints:
            runs = figures[(label, connections)]
            rps = statistics.median(r[0] for r in runs)
            p50 = statistics.median(r[1] for r in runs)
            p99 = statistics.median(r[2] for r in runs)
            ratio = statistics.median(ratios[(label, connections)])
            print(f"{label:<8} {connections:>5} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {ratio:>7.3f}")
    print("\nshadows offered in all rounds' runs:")
    print(f"{'config':<8} {'conns':>5} {'compared':>9} {'dropped':>9} {'failed':>7}")
    for _, connections in LOADS:
        for label in SHADOWED:
            compared, dropped, failed = shadows[(label, connections)]
            print(f"{label:<8} {connections:>5} {compared:>9} {dropped:>9} {failed:>7}")


if __name__ == "__main__":
    main()

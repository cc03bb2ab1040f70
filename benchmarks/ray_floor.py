"""What Ray Serve itself costs a request on sigserve's stack, against MLServer. Run on purpose.

    flock /tmp/sigserve-heavy.lock .venv/bin/python benchmarks/ray_floor.py [--seconds 5]

Issue 18 asks for >= 1.2x MLServer at 1 connection. This measures the floor under that: on the
Ray that sigserve's stack starts (``bench_stack.running_stack``: direct ingress through HAProxy,
the throughput-optimized mode, HAProxy's per-request metrics off, ``sigserve.stack``), next to
sigserve's own app, two no-op deployments with sigserve's deployment settings (one replica,
``max_ongoing_requests`` 64, Ray's access log off, 0.1 CPU):

- ``ray noop fastapi``: a FastAPI app, one POST route returning a constant JSON answer: what a
  plain FastAPI app on Ray Serve costs.
- ``ray noop asgi``: a FastAPI app whose ``__call__`` reads the body and answers the constant
  itself, as ``serving.fast_routes`` answers sigserve's hot routes: no routing, no model, nothing
  of sigserve's. What is left is Ray Serve's direct ingress (its request bookkeeping, the
  disconnect watch, ``RequestIdMiddleware``), uvicorn and HAProxy's hop: the floor of any app
  on this stack.
- ``uvicorn noop asgi``: the same ASGI answer in a plain uvicorn process (no Ray, no HAProxy),
  the same machine: what the floor would be without Ray Serve.

And, for the same run: sigserve's ``/serve`` on the numeric tensor model (``v2_throughput.py``'s
``row_stats.py``, one row) and MLServer 1.7.1's ``/invocations`` and V2 ``infer`` on the same
version (``mlserver_peer.py``, one process). wrk at 1 connection and 16, paths alternating
within each round, each round starting at the next path. Prints req/s (median of rounds), p50,
each path's ratio to MLServer's ``/invocations`` (median of the per-round ratios) and the CPU
per request of every process (from /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path
from typing import Any

# The answer every no-op path gives: the numeric model's answer to one row, as /serve gives it.
ANSWER = b'{"outputs":[[-0.5,2.0]]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def noop_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The constant answer, read the body first: an ASGI app that does nothing else."""
    if scope["type"] != "http":  # lifespan: nothing to start
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def noop_deployments() -> dict[str, Any]:
    """route prefix -> the bound Serve application of each no-op deployment."""
    from fastapi import FastAPI
    from fastapi.responses import Response
    from ray import serve

    options: dict[str, Any] = {
        "max_ongoing_requests": 64,
        "logging_config": {"enable_access_log": False},
        "ray_actor_options": {"num_cpus": 0.1},
    }

    class ConstantAPI(FastAPI):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["method"] == "POST":
                await noop_asgi(scope, receive, send)
                return
            await super().__call__(scope, receive, send)

    @serve.ingress()
    class NoopFastAPI:
        def __serve_build_asgi_app__(self) -> FastAPI:
            app = FastAPI()

            @app.post("/")
            async def noop() -> Response:
                return Response(ANSWER, media_type="application/json")

            return app

    @serve.ingress()
    class NoopASGI:
        def __serve_build_asgi_app__(self) -> FastAPI:
            return ConstantAPI()

    return {
        "/floor-fastapi": serve.deployment(name="NoopFastAPI", **options)(NoopFastAPI).bind(),
        "/floor-asgi": serve.deployment(name="NoopASGI", **options)(NoopASGI).bind(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from bench_stack import HOST, running_stack
    from ray import serve
    from v2_throughput import numeric_with_mlserver
    from wrk_rounds import drive_rounds, ready_endpoints

    from sigserve.ports import free_port
    from sigserve.processes import ManagedProcess

    row = {"inputs": [[1.0, 2.0, -3.5]]}
    v2 = {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, 3],
                      "data": [1.0, 2.0, -3.5]}]}  # fmt: skip
    with running_stack("bench-floor-") as stack, contextlib.ExitStack() as peers:
        for prefix, app in noop_deployments().items():
            serve.run(app, name=prefix.strip("/"), route_prefix=prefix, blocking=False)
        peer = peers.enter_context(numeric_with_mlserver(stack))
        port = free_port()
        uvicorn = ManagedProcess(
            "uvicorn noop",
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).parent),
             "--host", HOST, "--port", str(port), "--no-access-log", "--log-level", "warning",
             "ray_floor:noop_asgi"],
            env=dict(os.environ),
            log_path=stack.home / "uvicorn-noop.log",
        )  # fmt: skip
        peers.callback(uvicorn.stop)
        uvicorn.start()
        targets: dict[str, tuple[str, object]] = {
            "sigserve /serve": (f"{stack.serving_url}/models/numeric/serve", row),
            "ray noop fastapi": (f"{stack.serving_url}/floor-fastapi/", row),
            "ray noop asgi": (f"{stack.serving_url}/floor-asgi/", row),
            "uvicorn noop asgi": (f"http://{HOST}:{port}/", row),
            "mlserver /invocations": (peer.invocations, row),
            "mlserver /v2 infer": (peer.infer, v2),
        }
        endpoints = ready_endpoints(targets, stack.home / "wrk", 180)
        figures = drive_rounds(endpoints, args.rounds, args.seconds)
        print(f"{'path':22} {'c':>3} {'req/s (median)':>15} {'p50 ms':>7} {'x MLServer inv':>15}")
        for (label, connections), runs in figures.rps.items():
            ratio = figures.ratio(label, "mlserver /invocations", connections)
            print(
                f"{label:22} {connections:>3} {statistics.median(runs):>15.0f} "
                f"{statistics.median(figures.p50[(label, connections)]):>7.2f} "
                f"{ratio or float('nan'):>15.2f}"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()

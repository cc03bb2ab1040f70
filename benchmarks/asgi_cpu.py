"""The serving app's own CPU per request, driven by raw ASGI calls: no client, no socket, no Ray.
Run on purpose.

    .venv/bin/python benchmarks/asgi_cpu.py [--requests 4000] [--rounds 3] [--profile PATH]

``request_cpu.py`` drives the app through httpx, whose client is ~40% of what it measures; here
a request is one ``await app(scope, receive, send)`` with a prepared scope and a one-message
body, the app wrapped in Ray Serve's ``RequestIdMiddleware`` as a replica wraps it, one request
at a time (the one-connection case, where CPU is latency). Each path is measured two ways in
alternating rounds of the same process: ``fast`` (the app as built, ``serving.fast_routes``)
and ``fastapi`` (the same app object through ``FastAPI.__call__``, every request through
FastAPI's middleware and router, as before the fast routes). Prints the median over rounds of
the CPU per request, what ``fast`` saves, and the Python function calls per request (cProfile's
count over 200 requests; on a busy machine it moves too, with the batcher's choice between the
event loop and a worker thread, so compare the CPU saved over several runs).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from request_cpu import build_app

PATHS: dict[str, tuple[str, Any]] = {
    "/serve": ("/models/upper/serve", [{"prompt": "hello world"}]),
    "/invocations records": (
        "/models/upper/invocations", {"dataframe_records": [{"prompt": "hello world"}]}),
    "/v2 infer": ("/v2/models/upper/infer", {"inputs": [
        {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["hello world"]}]}),
}  # fmt: skip

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def scope_for(path: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
        "root_path": "", "query_string": b"", "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()), (b"user-agent", b"wrk"),
        ],
    }  # fmt: skip


async def one(app: App, path: str, body: bytes) -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope_for(path, body), receive, send)
    if sent[0]["status"] != 200:
        raise RuntimeError(f"{path}: {sent[0]['status']} {sent[-1].get('body')!r}")


async def measure(app: App, path: str, body: bytes, requests: int) -> float:
    started = time.process_time()
    for _ in range(requests):
        await one(app, path, body)
    return 1e6 * (time.process_time() - started) / requests


async def calls_per_request(app: App, path: str, body: bytes, requests: int) -> float:
    profiler = cProfile.Profile()
    profiler.enable()
    await measure(app, path, body, requests)
    profiler.disable()
    return pstats.Stats(profiler).total_calls / requests  # type: ignore[attr-defined,no-any-return]


async def drive(fastapi_app: FastAPI, requests: int, rounds: int, profile: Path | None) -> None:
    from ray.serve._private.http_util import RequestIdMiddleware

    async def through_fastapi(scope: Any, receive: Any, send: Any) -> None:
        await FastAPI.__call__(fastapi_app, scope, receive, send)

    ways: dict[str, App] = {
        "fast": RequestIdMiddleware(fastapi_app),
        "fastapi": RequestIdMiddleware(through_fastapi),
    }
    async with fastapi_app.router.lifespan_context(fastapi_app):
        results: dict[tuple[str, str], list[float]] = {}
        calls: dict[tuple[str, str], float] = {}
        for label, (path, payload) in PATHS.items():
            body = json.dumps(payload).encode()
            for app in ways.values():
                await measure(app, path, body, 300)  # warm
            for _ in range(rounds):
                for way, app in ways.items():
                    us = await measure(app, path, body, requests)
                    results.setdefault((label, way), []).append(us)
            for way, app in ways.items():
                calls[(label, way)] = await calls_per_request(app, path, body, 200)
            if profile is not None:
                for way, app in ways.items():
                    profiler = cProfile.Profile()
                    profiler.enable()
                    await measure(app, path, body, requests)
                    profiler.disable()
                    text = io.StringIO()
                    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
                    with profile.open("a") as out:
                        out.write(f"\n==== {label} {way}\n{text.getvalue()}")
        print(f"{'path':22} {'fastapi us':>11} {'fast us':>8} {'saved':>6} {'calls':>11}  (rounds)")
        for label in PATHS:
            slow = statistics.median(results[(label, "fastapi")])
            fast = statistics.median(results[(label, "fast")])
            rounds_text = " ".join(
                f"{a:.0f}/{b:.0f}"
                for a, b in zip(results[(label, "fastapi")], results[(label, "fast")], strict=True)
            )
            counted = f"{calls[(label, 'fastapi')]:.0f}->{calls[(label, 'fast')]:.0f}"
            print(
                f"{label:22} {slow:>11.0f} {fast:>8.0f} {slow - fast:>6.0f} {counted:>11}"
                f"  ({rounds_text})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.write_text("")
    with tempfile.TemporaryDirectory(prefix="sigserve-asgi-cpu-") as tmp:
        app = build_app(Path(tmp))
        asyncio.run(drive(app, args.requests, args.rounds, args.profile))


if __name__ == "__main__":
    main()

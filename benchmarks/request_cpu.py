"""CPU per request on each path, in one process, without Ray or HTTP sockets. Run on purpose.

    .venv/bin/python benchmarks/request_cpu.py [--requests 3000] [--profile PATH]

The trivial model (``benchmarks/models/upper.py``) is saved and loaded with MLflow, put behind
the real API (``serving.api.create_app``) and model host, with a routing table that serves it,
and driven through httpx's ASGI transport, one request at a time and 16 at once. What it prints
is the process's CPU time per request on each path (``/serve``, ``/invocations`` in each JSON
format, V2 ``infer``), the part of a replica's cost that sigserve's own code decides; with
``--profile`` it also writes cProfile's statistics of each path (cumulative, top 25).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from in_process import in_process_app

HERE = Path(__file__).resolve().parent
UPPER_MODEL = HERE / "models" / "upper.py"

BODIES: dict[str, tuple[str, Any]] = {
    "/serve": ("serve", [{"prompt": "hello world"}]),
    "/invocations dataframe_records": (
        "invocations", {"dataframe_records": [{"prompt": "hello world"}]}),
    "/invocations dataframe_split": (
        "invocations", {"dataframe_split": {"columns": ["prompt"], "data": [["hello world"]]}}),
    "/invocations inputs": ("invocations", {"inputs": {"prompt": ["hello world"]}}),
    "/invocations instances": ("invocations", {"instances": [{"prompt": "hello world"}]}),
    "/v2 infer": ("v2", {"inputs": [
        {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["hello world"]}]}),
}  # fmt: skip


def build_app(directory: Path) -> Any:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature


    example = pd.DataFrame({"prompt": ["hello world"]})
    signature = infer_signature(example, pd.DataFrame({"output": ["HELLO WORLD"]}))
    path = directory / "upper"
    mlflow.pyfunc.save_model(
        path, python_model=str(UPPER_MODEL), signature=signature, pip_requirements=[]
    )
    model = mlflow.pyfunc.load_model(str(path))
    return in_process_app("upper", model, path, signature.to_dict())


def url(kind: str) -> str:
    return {
        "serve": "/models/upper/serve",
        "invocations": "/models/upper/invocations",
        "v2": "/v2/models/upper/infer",
    }[kind]


async def drive(app: Any, requests: int, concurrency: int, profile: Path | None) -> None:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://sigserve") as client,
    ):
        for label, (kind, body) in BODIES.items():
            content = json.dumps(body).encode()

            async def one(content: bytes = content, kind: str = kind, label: str = label) -> None:
                headers = {"content-type": "application/json"}
                response = await client.post(url(kind), content=content, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"{label}: {response.status_code} {response.text}")

            async def worker(n: int, one: Any = one) -> None:
                for _ in range(n):
                    await one()

            await asyncio.gather(*(worker(50) for _ in range(concurrency)))  # warm
            profiler = cProfile.Profile() if profile is not None else None
            started = time.process_time()
            if profiler is not None:
                profiler.enable()
            await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
            if profiler is not None:
                profiler.disable()
            took = time.process_time() - started
            print(f"{label:34} c={concurrency:<2} {1e6 * took / requests:8.0f} us CPU/request")
            if profiler is not None and profile is not None:
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
                with profile.open("a") as out:
                    out.write(f"\n==== {label} c={concurrency}\n{text.getvalue()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.write_text("")
    with tempfile.TemporaryDirectory(prefix="sigserve-request-cpu-") as tmp:
        app = build_app(Path(tmp))
        for concurrency in (1, 16):
            asyncio.run(drive(app, args.requests, concurrency, args.profile))


if __name__ == "__main__":
    main()

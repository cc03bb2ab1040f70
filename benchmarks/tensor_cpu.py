"""CPU per request on each path of a numeric tensor model, in one process, without Ray or HTTP
sockets. Run on purpose.

    .venv/bin/python benchmarks/tensor_cpu.py [--requests 3000] [--rows 1] [--profile PATH]

The numeric tensor model of the throughput benchmarks (``benchmarks/models/row_stats.py``,
float32 (-1, 3) -> (-1, 2)) is saved and loaded with MLflow, put behind the real API
(``serving.api.create_app``) and model host, with a routing table that serves it, and driven
through httpx's ASGI transport, one request at a time and 16 at once, each request ``--rows``
rows. It prints the process's CPU time per request on each path (``/serve``, ``/invocations``
with ``inputs`` and ``instances``, V2 ``infer``) and how many predict calls the model saw; with
``--profile``, cProfile's statistics of each path (cumulative, top 30).
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
ROW_STATS = HERE / "models" / "row_stats.py"


def bodies(rows: int) -> dict[str, tuple[str, Any]]:
    data = [[float(i), float(i) + 1.5, -float(i)] for i in range(rows)]
    flat = [value for row in data for value in row]
    return {
        "/serve": ("/models/numeric/serve", {"inputs": data}),
        "/invocations inputs": ("/models/numeric/invocations", {"inputs": data}),
        "/invocations instances": ("/models/numeric/invocations", {"instances": data}),
        "/v2 infer": ("/v2/models/numeric/infer", {"inputs": [
            {"name": "input-0", "datatype": "FP32", "shape": [rows, 3], "data": flat}]}),
    }  # fmt: skip


def build_app(directory: Path) -> tuple[Any, list[int]]:
    """The app, and a one-item list counting the model's predict calls."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec


    signature = ModelSignature(
        Schema([TensorSpec(np.dtype(np.float32), (-1, 3))]),
        Schema([TensorSpec(np.dtype(np.float32), (-1, 2))]),
    )
    path = directory / "numeric"
    mlflow.pyfunc.save_model(
        path, python_model=str(ROW_STATS), signature=signature, pip_requirements=[]
    )
    model = mlflow.pyfunc.load_model(str(path))
    calls = [0]
    inner = model._model_impl.python_model
    original = inner.predict

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    inner.predict = counted
    return in_process_app("numeric", model, path, signature.to_dict()), calls


async def drive(
    app: Any, calls: list[int], requests: int, rows: int, concurrency: int, profile: Path | None
) -> None:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://sigserve") as client,
    ):
        for label, (path, body) in bodies(rows).items():
            content = json.dumps(body).encode()

            async def one(content: bytes = content, path: str = path, label: str = label) -> None:
                headers = {"content-type": "application/json"}
                response = await client.post(path, content=content, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"{label}: {response.status_code} {response.text}")

            async def worker(n: int, one: Any = one) -> None:
                for _ in range(n):
                    await one()

            await asyncio.gather(*(worker(50) for _ in range(concurrency)))  # warm
            profiler = cProfile.Profile() if profile is not None else None
            before = calls[0]
            started = time.process_time()
            if profiler is not None:
                profiler.enable()
            await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
            if profiler is not None:
                profiler.disable()
            took = time.process_time() - started
            predicts = calls[0] - before
            print(
                f"{label:26} rows={rows:<3} c={concurrency:<2} {1e6 * took / requests:7.0f} us "
                f"CPU/request, {predicts / requests:.2f} predict calls/request"
            )
            if profiler is not None and profile is not None:
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
                with profile.open("a") as out:
                    out.write(f"\n==== {label} rows={rows} c={concurrency}\n{text.getvalue()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.write_text("")
    with tempfile.TemporaryDirectory(prefix="sigserve-tensor-cpu-") as tmp:
        app, calls = build_app(Path(tmp))
        for concurrency in (1, 16):
            asyncio.run(drive(app, calls, args.requests, args.rows, concurrency, args.profile))


if __name__ == "__main__":
    main()

"""The Open Inference Protocol over gRPC: what it costs HTTP, and what it serves. Run on purpose.

    .venv/bin/python benchmarks/grpc_throughput.py [--seconds 10] [--rounds 2]

Each round starts the stack (``bench_stack.running_stack``, the fast path) twice, Serve's gRPC
listener off and then on, so drift on this shared machine spreads over both, registers a
numeric model (tests/integration/models/scoring_tensor.py: a float32 (-1, 3) tensor in, each
row's sum and maximum out) and measures, one row per request:

- HTTP ``POST /models/{name}/serve`` with ``wrk --latency`` at ``-t1 -c1`` and ``-t2 -c16``
  (both stacks): does a gRPC listener beside it cost the HTTP path anything?
- gRPC ``ModelInfer`` (gRPC on only), raw contents as tritonclient sends them, through
  HAProxy's gRPC frontend: a Python ``grpc.aio`` loop of 1 and of 16 callers, each on its own
  channel (connection), for ``--seconds``. The client is Python on the same 2 cores as the
  server, so at 16 callers it takes CPU the server would have: a floor, not the server's
  ceiling.

Prints a table of medians over rounds (req/s, p50, p99); errors are counted and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from bench_stack import HOST, running_stack
from wrk import Endpoint, parse_wrk, run_wrk, write_wrk_script

from sigserve.ports import free_port

MODEL = "numeric"
ROOT = Path(__file__).resolve().parent.parent
TENSOR_MODEL = ROOT / "tests" / "integration" / "models" / "scoring_tensor.py"
ROW = [[1.0, 2.0, 3.0]]


def register(serving_url: str) -> None:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    signature = ModelSignature(
        Schema([TensorSpec(np.dtype(np.float32), (-1, 3))]),
        Schema([TensorSpec(np.dtype(np.float32), (-1, 2))]),
    )
    with mlflow.start_run():
        mlflow.pyfunc.log_model(
            name="model", python_model=str(TENSOR_MODEL), signature=signature,
            pip_requirements=[], registered_model_name=MODEL,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answer = httpx.post(f"{serving_url}/models/{MODEL}/serve", json={"inputs": ROW})
        if answer.status_code == 200:
            return
        time.sleep(0.5)
    raise SystemExit(f"{MODEL} was not served within 120 s: {answer.status_code} {answer.text}")


def http_runs(serving_url: str, directory: Path, seconds: float) -> dict[int, tuple[float, ...]]:
    body = '{"inputs": [[1.0, 2.0, 3.0]]}'
    endpoint = Endpoint(f"{serving_url}/models/{MODEL}/serve", body)
    endpoint.script = write_wrk_script(directory, "serve", body)
    run_wrk(endpoint, 1, 1, 2)  # warm-up
    runs = {}
    for connections, threads in ((1, 1), (16, 2)):
        rps, p50, p99, bad, errors = parse_wrk(run_wrk(endpoint, threads, connections, seconds))
        if bad or errors:
            print(f"  HTTP c{connections}: {bad} non-2xx, {errors} socket errors")
        runs[connections] = (rps, p50, p99)
    return runs


async def grpc_run(target: str, callers: int, seconds: float) -> tuple[float, float, float, int]:
    import grpc

    from serving.grpc_protocol import grpc_predict_v2_pb2 as pb
    from serving.grpc_protocol.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input-0", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.asarray(ROW, dtype="<f4").tobytes())
    latencies: list[float] = []
    errors = 0

    async def caller(stop: float) -> None:
        nonlocal errors
        async with grpc.aio.insecure_channel(target) as channel:
            stub = GRPCInferenceServiceStub(channel)
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    await stub.ModelInfer(request, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(caller(began + seconds) for _ in range(callers)))
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies) or [0.0]
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return len(latencies) / elapsed, p50, p99, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, ...]]] = {}
    with tempfile.TemporaryDirectory(prefix="sigserve-bench-grpc-") as tmp:
        for round_ in range(args.rounds):
            for grpc_on in (False, True):
                grpc_port = free_port() if grpc_on else 0
                label = "gRPC on" if grpc_on else "gRPC off"
                print(f"round {round_ + 1}: stack with {label}", flush=True)
                with running_stack("bench-grpc-", grpc_port=grpc_port) as stack:
                    register(stack.serving_url)
                    for c, run in http_runs(stack.serving_url, Path(tmp), args.seconds).items():
                        results.setdefault(f"HTTP /serve c{c} ({label})", []).append(run)
                    if grpc_on:
                        target = f"{HOST}:{grpc_port}"
                        asyncio.run(grpc_run(target, 1, 2))  # warm-up
                        for callers in (1, 16):
                            rps, p50, p99, errors = asyncio.run(
                                grpc_run(target, callers, args.seconds)
                            )
                            if errors:
                                print(f"  gRPC c{callers}: {errors} errors")
                            key = f"gRPC ModelInfer c{callers}"
                            results.setdefault(key, []).append((rps, p50, p99))
    print(f"\n{'path':36} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  (medians of rounds)")
    for key, runs in results.items():
        rps, p50, p99 = (statistics.median(r[i] for r in runs) for i in range(3))
        every = ", ".join(f"{r[0]:.0f}" for r in runs)
        print(f"{key:36} {rps:9.0f} {p50:8.2f} {p99:8.2f}  ({every})")


if __name__ == "__main__":
    main()

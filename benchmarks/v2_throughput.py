"""The Open Inference Protocol against /serve and /invocations, on one stack. Run on purpose.

    .venv/bin/python benchmarks/v2_throughput.py [--seconds 5] [--rounds 2]

Starts its own stack (``bench_stack.running_stack``), registers the trivial model (a string
column, ``benchmarks/models/upper.py``) and a numeric tensor model (``row_stats.py``, float32
(-1, 3)), and drives each path with ``wrk`` at 1 connection and 16, one record per request,
the paths alternating back to back each round. Prints req/s medians over rounds and each path's
ratio to ``/serve`` (median of the per-round ratios).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import httpx
from bench_stack import running_stack
from serving_throughput import register_trivial, wait_until
from wrk import Endpoint, parse_wrk, run_wrk, write_wrk_script

ROW_STATS = Path(__file__).parent / "models" / "row_stats.py"


def register_numeric(name: str) -> str:
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    signature = ModelSignature(
        Schema([TensorSpec(np.dtype(np.float32), (-1, 3))]),
        Schema([TensorSpec(np.dtype(np.float32), (-1, 2))]),
    )
    with mlflow.start_run(run_name=f"{name} (row stats)"):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(ROW_STATS), signature=signature,
            pip_requirements=["mlflow", "numpy"], registered_model_name=name,
        )  # fmt: skip
    return str(info.registered_model_version)


def bodies() -> dict[str, tuple[str, object]]:
    """label -> (path, body): one record each."""
    return {
        "trivial /serve": ("/models/trivial/serve", [{"prompt": "hello world"}]),
        "trivial /invocations": (
            "/models/trivial/invocations", {"dataframe_records": [{"prompt": "hello world"}]},
        ),
        "trivial /v2 infer": ("/v2/models/trivial/infer", {"inputs": [
            {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["hello world"]}]}),
        "numeric /serve": ("/models/numeric/serve", {"inputs": [[1.0, 2.0, 3.0]]}),
        "numeric /v2 infer": ("/v2/models/numeric/infer", {"inputs": [
            {"name": "input-0", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]}),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with running_stack("bench-v2-") as stack:
        scripts = stack.home / "wrk"
        scripts.mkdir()
        register_trivial("trivial")
        register_numeric("numeric")
        endpoints: dict[str, Endpoint] = {}
        client = httpx.Client(timeout=60)
        for i, (label, (path, body)) in enumerate(bodies().items()):
            text = json.dumps(body)
            endpoint = Endpoint(stack.serving_url + path, text)
            endpoint.script = write_wrk_script(scripts, f"e{i}", text)
            endpoints[label] = endpoint
            wait_until(
                label,
                lambda e=endpoint: client.post(e.url, content=e.body, headers={
                    "content-type": "application/json"}).status_code == 200,
                120,
            )  # fmt: skip
        figures: dict[tuple[str, int], list[float]] = {}
        for connections in (1, 16):
            for endpoint in endpoints.values():  # warm each path
                run_wrk(endpoint, 1 if connections == 1 else 2, connections, 1)
            for _ in range(args.rounds):
                for label, endpoint in endpoints.items():
                    out = run_wrk(endpoint, 1 if connections == 1 else 2, connections, args.seconds)
                    rps, _, _, bad, errors = parse_wrk(out)
                    if bad or errors:
                        print(f"! {label} c{connections}: {bad} non-2xx, {errors} socket errors")
                    figures.setdefault((label, connections), []).append(rps)
        print(f"{'path':24} {'c':>3} {'req/s (median)':>15} {'x /serve':>9}")
        for (label, connections), runs in figures.items():
            base = figures[(label.split(" ")[0] + " /serve", connections)]
            ratio = statistics.median(r / b for r, b in zip(runs, base, strict=True))
            print(f"{label:24} {connections:>3} {statistics.median(runs):>15.0f} {ratio:>9.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""The Open Inference Protocol against /serve and /invocations, on one stack. Run on purpose.

    .venv/bin/python benchmarks/v2_throughput.py [--seconds 5] [--rounds 2] [--mlserver]

Starts its own stack (``bench_stack.running_stack``), registers the trivial model (a string
column, ``benchmarks/models/upper.py``) and a numeric tensor model (``row_stats.py``, float32
(-1, 3)), and drives each path with ``wrk`` at 1 connection and 16, one record per request,
the paths alternating back to back each round, each round starting at the next path
(``wrk_rounds.py``). Prints each run with the CPU per request of every process, then req/s
medians over rounds and each path's ratio to ``/serve`` (median of the per-round ratios).
With ``--mlserver``, Seldon MLServer (``mlserver_peer.py``) serves the same versions too, one
process per model, and each path's ratio to MLServer's path of the same protocol is printed
beside (its V2 path on the numeric model only: MLServer 1.7.1 fails to encode the trivial
model's string output under pandas 3).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

from bench_stack import Stack, running_stack
from mlserver_peer import CORE, Peer, running_mlserver
from serving_targets import register_trivial
from wrk_rounds import drive_rounds, ready_endpoints

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


@contextlib.contextmanager
def numeric_with_mlserver(stack: Stack) -> Iterator[Peer]:
    """The numeric model registered in ``stack``'s MLflow as ``numeric``, and MLServer serving
    it from its venv without torch, until the block ends."""
    version = register_numeric("numeric")
    uri = f"models:/numeric/{version}"
    home, tracking = stack.home, stack.tracking_uri
    with running_mlserver("numeric", uri, home, tracking, requirements=CORE) as peer:
        yield peer


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
        "numeric /invocations": ("/models/numeric/invocations", {"inputs": [[1.0, 2.0, 3.0]]}),
        "numeric /v2 infer": ("/v2/models/numeric/infer", {"inputs": [
            {"name": "input-0", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]}),
    }  # fmt: skip


# MLServer's paths: label -> (model, which of its routes, the body of that sigserve label).
MLSERVER = {
    "trivial mlserver /invocations": ("trivial", "invocations", "trivial /invocations"),
    "numeric mlserver /invocations": ("numeric", "invocations", "numeric /invocations"),
    "numeric mlserver /v2 infer": ("numeric", "infer", "numeric /v2 infer"),
}


def peer_of(label: str) -> str | None:
    """The MLServer path a sigserve path is compared with: the same model and protocol."""
    model, _, path = label.partition(" ")
    route = "/v2 infer" if path == "/v2 infer" else "/invocations"
    peer = f"{model} mlserver {route}"
    return peer if peer in MLSERVER else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mlserver", action="store_true", help="MLServer as the peer too")
    args = parser.parse_args()
    with running_stack("bench-v2-") as stack, contextlib.ExitStack() as peers:
        versions = {"trivial": register_trivial("trivial"), "numeric": register_numeric("numeric")}
        targets = {
            label: (stack.serving_url + path, body) for label, (path, body) in bodies().items()
        }
        if args.mlserver:
            served = {
                model: peers.enter_context(
                    running_mlserver(model, f"models:/{model}/{version}", stack.home,
                                     stack.tracking_uri)
                )
                for model, version in versions.items()
            }  # fmt: skip
            for label, (model, route, same_as) in MLSERVER.items():
                url = getattr(served[model], route)
                targets[label] = (url, bodies()[same_as][1])
        figures = drive_rounds(
            ready_endpoints(targets, stack.home / "wrk", 120), args.rounds, args.seconds
        ).rps
        print(f"{'path':30} {'c':>3} {'req/s (median)':>15} {'x /serve':>9} {'x MLServer':>11}")
        for (label, connections), runs in figures.items():
            serve = figures.get((label.split(" ")[0] + " /serve", connections))
            peer = peer_of(label)
            base = figures.get((peer, connections)) if peer is not None else None
            cells = [ratio(runs, serve, 9), ratio(runs, base, 11)]
            if "mlserver" in label:
                cells = [f"{'-':>9}", f"{'-':>11}"]
            print(f"{label:30} {connections:>3} {statistics.median(runs):>15.0f} {' '.join(cells)}")
    sys.stdout.flush()


def ratio(runs: list[float], base: list[float] | None, width: int) -> str:
    """The median of the per-round ratios of ``runs`` to ``base``."""
    if not base:
        return f"{'-':>{width}}"
    value = statistics.median(r / b for r, b in zip(runs, base, strict=True))
    return f"{value:>{width}.2f}"


if __name__ == "__main__":
    main()

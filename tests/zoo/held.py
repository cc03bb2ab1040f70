"""What every zoo test does with its model: register it in-process with the MLflow 3.17 client,
wait for it to go live, call it on sigserve, and hold each answer to the loaded model's own
in-process ``predict`` on the same input (``mlflow.pyfunc.load_model`` of the same model URI).

Figures per model (``tests/zoo/conftest.py``'s ``figures``): registration -> live (from the
registry's own creation timestamp of the version), registration -> first answer, the first
answered request's latency, and the largest absolute difference from the in-process prediction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pandas as pd

from tests.integration.conftest import ControllerHandle, server_call, wait_for
from tests.zoo.conftest import Figures

LIVE_TIMEOUT_S = 90.0


def registered_at(name: str, version: str) -> float:
    """When the registry created ``version`` (seconds since the epoch, its own clock)."""
    from mlflow import MlflowClient

    created = MlflowClient().get_model_version(name, version).creation_timestamp
    return float(created) / 1000


def in_process(name: str, version: str) -> Any:
    """The model as MLflow itself loads it here: what each answer is held to."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(f"models:/{name}/{version}")


def go_live(ctl: ControllerHandle, name: str, version: str, figures: Figures) -> float:
    """Wait for the controller to decide ``version`` live; returns its registration time."""
    born = registered_at(name, version)
    state = wait_for(lambda: ctl.state_of(name, version) in ("live", "quarantined")
                     and ctl.state_of(name, version), LIVE_TIMEOUT_S, 0.05)
    figures("registration -> live", time.time() - born)
    decided = next(v for v in ctl.model(name)["versions"] if v["version"] == version)
    assert state == "live", decided["reasons"]
    return born


def first_answer(url: str, path: str, born: float, figures: Figures,
                 send: Callable[[str], httpx.Response]) -> httpx.Response:
    """The first answer other than 404/503 (the decided table not at the replica yet; a client
    retries a 503 as its Retry-After says, this polls faster)."""

    def answered() -> httpx.Response | None:
        r = send(f"{url}{path}")
        return r if r.status_code not in (404, 503) else None

    first: httpx.Response = wait_for(answered, LIVE_TIMEOUT_S, 0.05)
    figures("registration -> first answer", time.time() - born)
    figures("first answered request", first.elapsed.total_seconds())
    return first


def post_json(body: Any) -> Callable[[str], httpx.Response]:
    return lambda url: httpx.post(url, json=body, timeout=60)


def max_abs_diff(served: Any, expected: Any) -> float:
    """The largest |served - expected| over two numeric results of the same shape."""
    a, b = np.asarray(served, dtype=float), np.asarray(expected, dtype=float)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def frame_diff(served: list[dict[str, Any]], expected: pd.DataFrame) -> float:
    """Records answered vs the model's DataFrame: same columns, equal non-numeric values, and
    the largest absolute difference over the numeric ones."""
    got = pd.DataFrame.from_records(served)
    assert list(got.columns) == [str(c) for c in expected.columns], (got.columns, expected.columns)
    assert len(got) == len(expected)
    worst = 0.0
    for column in expected.columns:
        mine, theirs = got[str(column)], expected[column]
        if pd.api.types.is_numeric_dtype(theirs) and not pd.api.types.is_bool_dtype(theirs):
            worst = max(worst, max_abs_diff(mine.to_numpy(), theirs.to_numpy()))
        else:
            assert mine.tolist() == theirs.tolist(), column
    return worst


def predict_calls(name: str, version: str) -> int:
    """Predict calls the (single) replica's batcher has made for ``name`` version ``version``
    (``/serve`` only: ``/invocations`` is not batched)."""
    stats: dict[str, dict[str, Any]] = server_call("batch_stats")
    return sum(s["calls"] for key, s in stats.items() if key.startswith(f"{name}/{version}@"))


def concurrently(url: str, bodies: list[Any]) -> list[httpx.Response]:
    """``bodies`` POSTed to ``url`` all at once (one connection each), answers in order."""

    async def all_at_once() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return list(await asyncio.gather(*(client.post(url, json=b) for b in bodies)))

    return asyncio.run(all_at_once())

"""What every team that used MLflow before 3.0 has in its registry goes live (issue 17).

A scikit-learn pipeline is logged AND registered by an MLflow 2.22 client (scikit-learn 1.5.2
and the pandas and numpy pip resolves for them) running in a venv of its own, against the
session's `mlflow server` (MLflow 3.17, SQL store) over HTTP. Its ``requirements.txt`` names
``mlflow==2.22.0`` and a pandas 2, neither of which the serving environment has. sigserve must
make that version live (no quarantine; the mismatches as warnings) and answer, on ``/serve``
and ``/invocations``, what MLflow 2 itself computed in-process on the same input.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import ControllerHandle, serve_status, wait_for
from tests.zoo import foreign_env
from tests.zoo.conftest import Figures, figures_for

NAME = "zoo_mlflow2_sklearn"
PINS = ["mlflow==2.22.0", "scikit-learn==1.5.2"]
CLIENT = Path(__file__).parent / "clients" / "mlflow2_sklearn.py"
# Two builds of the same float64 arithmetic (scikit-learn 1.5 vs 1.9, numpy's BLAS): equal to
# the last few bits, not necessarily bit for bit.
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def mlflow2(figures_module: Figures) -> foreign_env.ForeignEnv:
    env = foreign_env.ensure(PINS)
    figures_module("MLflow 2 venv " + ("built (cold)" if env.built else "from cache (warm)"),
                   env.seconds)
    if env.built:  # the second run's cost, measured now rather than claimed
        figures_module("MLflow 2 venv from cache (warm)", foreign_env.ensure(PINS).seconds)
    return env


@pytest.fixture(scope="module")
def figures_module() -> Figures:
    return figures_for("test_mlflow2_sklearn")


def requirements_of(ctl: ControllerHandle, version: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        v for v in ctl.model(NAME)["versions"] if v["version"] == version
    )
    return found


def test_an_mlflow2_sklearn_model_goes_live_and_answers_what_mlflow2_computed(
    tmp_path: Path, mlflow2: foreign_env.ForeignEnv, tracking_uri: str, serving_url: str,
    ctl: ControllerHandle, figures_module: Figures,
) -> None:
    figures = figures_module
    output = tmp_path / "mlflow2.json"
    logged = mlflow2.run(CLIENT, NAME, str(output), env={"MLFLOW_TRACKING_URI": tracking_uri})
    assert logged.returncode == 0, logged.stderr[-3000:]
    seen = json.loads(output.read_text(encoding="utf-8"))
    assert seen["client"]["mlflow"] == "2.22.0" and seen["client"]["pandas"].startswith("2.")
    version = seen["version"]
    figures("MLflow 2 client", " ".join(f"{k} {v}" for k, v in seen["client"].items()), "")

    live_at = wait_for(lambda: ctl.state_of(NAME, version) in ("live", "quarantined")
                       and time.time(), 60, 0.05)
    decided = requirements_of(ctl, version)
    assert decided["state"] == "live", decided["reasons"]
    figures("registration -> live", live_at - seen["registered_at"])
    warnings = decided["warnings"]
    assert any(w.startswith("requirement 'mlflow==2.22.0'") and "another major version" in w
               for w in warnings), warnings
    assert any(w.startswith("requirement 'pandas==2.") and "another major version" in w
               for w in warnings), warnings

    def first_answer() -> httpx.Response | None:
        # 404, then 503 "no default version yet", until the decided table reaches the replica
        # (a client retries a 503 as its Retry-After says; this one polls faster).
        r = serve_status(serving_url, NAME, body=seen["input"])
        return r if r.status_code not in (404, 503) else None

    first = wait_for(first_answer, 60, 0.05)
    figures("registration -> first answer", time.time() - seen["registered_at"])
    # The replica loads a new default before the table switches to it: no load in here.
    figures("first answered request", first.elapsed.total_seconds())
    assert first.status_code == 200, first.text
    served = np.asarray(first.json(), dtype=float)
    expected = np.asarray(seen["predictions"], dtype=float)
    assert served.shape == expected.shape == (len(seen["input"]), 3)
    difference = float(np.max(np.abs(served - expected)))
    figures("max |sigserve - MLflow 2| on /serve", difference, "")
    assert difference <= TOLERANCE

    scored = httpx.post(f"{serving_url}/models/{NAME}/invocations",
                        json={"dataframe_records": seen["input"]}, timeout=30)
    assert scored.status_code == 200, scored.text
    invoked = np.asarray(scored.json()["predictions"], dtype=float)
    figures("max |sigserve - MLflow 2| on /invocations",
            float(np.max(np.abs(invoked - expected))), "")
    assert float(np.max(np.abs(invoked - expected))) <= TOLERANCE

    started = time.monotonic()
    again = serve_status(serving_url, NAME, body=seen["input"])
    figures("a request once loaded", time.monotonic() - started)
    for warning in warnings:
        figures("warning", warning, "")
    assert again.status_code == 200 and again.json() == first.json()

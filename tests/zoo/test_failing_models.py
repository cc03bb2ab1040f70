"""Versions that fail on their own terms (issue 17, "Real models in the tests"): one whose
``predict`` raises on its own input example, one that answers a column its output schema lacks.
Both are logged from code with an input example and an explicit signature, and both pass the
gate; the proof before the first request (a serving replica calls each on its own example and
checks the answer against its outputs) quarantines them with the cause before any client can
call them.

Asserted: the version's state is ``quarantined`` with the cause as its reason (exception type
and first line, or the undeclared column; no traceback); every request a client made from the
registration on was answered 404 or 503 (not in the table yet, pending), never 200; from the
decision on, ``/serve`` and ``/invocations`` answer 409 with that reason.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pandas as pd

from tests.integration.conftest import ControllerHandle, problem, wait_for
from tests.zoo.conftest import Figures
from tests.zoo.held import LIVE_TIMEOUT_S, in_process, post_json, registered_at

MODELS = Path(__file__).parent / "models"


def _register(name: str, code: Path) -> str:
    import mlflow
    from mlflow.models import infer_signature

    example = pd.DataFrame({"prompt": ["hello"]})
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(code), input_example=example,
            signature=infer_signature(example, pd.DataFrame({"answer": ["HELLO"]})),
            pip_requirements=[], registered_model_name=name,
        )
    return str(info.registered_model_version)


def _quarantined(serving_url: str, ctl: ControllerHandle, name: str, version: str,
                 figures: Figures) -> list[str]:
    """Poll a client until the controller decides; the reasons, once quarantined. Every answer
    on the way is 404 or 503."""
    born = registered_at(name, version)
    send = post_json([{"prompt": "hello"}])
    statuses: list[int] = []

    def decided() -> str | None:
        statuses.append(send(f"{serving_url}/models/{name}/serve").status_code)
        state = ctl.state_of(name, version)
        return state if state in ("live", "quarantined") else None

    state = wait_for(decided, LIVE_TIMEOUT_S, 0.05)
    figures("registration -> quarantined", time.time() - born)
    record = next(v for v in ctl.model(name)["versions"] if v["version"] == version)
    assert state == "quarantined", record
    # Never 200, never 500; 409 only on the poll made once the controller had decided.
    assert set(statuses[:-1]) <= {404, 503} and statuses[-1] in (404, 409, 503), statuses
    reasons: list[str] = record["reasons"]
    return reasons


def _refused(serving_url: str, name: str, *causes: str) -> None:
    """From the decision on, both protocols answer 409 with the cause (the replica may take a
    moment to get the table that says so)."""
    records = [{"prompt": "hello"}]
    for path, body in ((f"/models/{name}/serve", records),
                       (f"/models/{name}/invocations", {"dataframe_records": records})):
        answer: httpx.Response = wait_for(
            lambda p=path, b=body: r
            if (r := httpx.post(f"{serving_url}{p}", json=b, timeout=30)).status_code != 503
            else None, 30, 0.05)  # fmt: skip
        assert answer.status_code == 409, answer.text
        detail = problem(answer)["detail"]
        assert "failed its proof" in detail, detail
        for cause in causes:
            assert cause in detail, detail


def test_a_version_whose_predict_raises_on_its_own_example_is_quarantined_by_its_proof(
    serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    name = "zoo_raises"
    version = _register(name, MODELS / "raises.py")
    try:
        in_process(name, version).predict(pd.DataFrame([{"prompt": "hello"}]))
    except ValueError as exc:
        assert "never fitted" in str(exc)  # MLflow's own predict fails on it the same way
    else:
        raise AssertionError("the model was meant to raise on its own example")
    reasons = _quarantined(serving_url, ctl, name, version, figures)
    assert "ValueError: cannot score 1 rows: the model was never fitted" in reasons[0], reasons
    assert "Traceback" not in " ".join(reasons)
    _refused(serving_url, name, "ValueError", "never fitted")


def test_a_version_answering_a_column_its_output_schema_lacks_is_quarantined_by_its_proof(
    serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    name = "zoo_extra_column"
    version = _register(name, MODELS / "extra_column.py")
    # In-process MLflow hands the extra column on: it never checks a prediction's outputs.
    assert list(in_process(name, version).predict(pd.DataFrame([{"prompt": "hello"}])).columns
                ) == ["answer", "debug"]
    reasons = _quarantined(serving_url, ctl, name, version, figures)
    assert "'debug'" in reasons[0] and "output schema lacks" in reasons[0], reasons
    _refused(serving_url, name, "'debug'")

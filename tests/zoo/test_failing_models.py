"""Versions that fail on their own terms, as they are served today (issue 17, "Real models in
the tests"): one whose ``predict`` raises on its own input example, one that answers a column
its output schema lacks. Both are logged from code with an input example and an explicit
signature, and both pass the gate, so today they go live: the proof on the input example that
would quarantine them before any client calls them is not built yet.

What holds today, asserted here: a client of either gets a 500 ``model-failed`` problem naming
the cause (no traceback), on ``/serve`` and on ``/invocations``, never a 200 with an answer
outside the version's contract.

Next slice (the proof, issue 17 "Proof before the first request"): both are quarantined with the
cause before their first request, their state ``quarantined`` and a client's answer a 409; these
assertions of ``live`` and 500 then change to that.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd

from tests.integration.conftest import ControllerHandle, problem
from tests.zoo.conftest import Figures
from tests.zoo.held import first_answer, go_live, in_process, post_json

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


def _model_failed(response: httpx.Response, *reasons: str) -> None:
    assert response.status_code == 500, response.text
    body = problem(response)
    assert body["type"] == "urn:sigserve:problem:model-failed", body
    for reason in reasons:
        assert reason in body["detail"], body


def test_a_version_whose_predict_raises_on_its_own_example_answers_500_model_failed(
    serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    name = "zoo_raises"
    version = _register(name, MODELS / "raises.py")
    born = go_live(ctl, name, version, figures)  # today: live (no proof yet)
    example = [{"prompt": "hello"}]
    try:
        in_process(name, version).predict(pd.DataFrame(example))
    except ValueError as exc:
        assert "never fitted" in str(exc)  # MLflow's own load fails on it the same way
    else:
        raise AssertionError("the model was meant to raise on its own example")

    first = first_answer(serving_url, f"/models/{name}/serve", born, figures, post_json(example))
    _model_failed(first, "ValueError", "never fitted")
    scored = httpx.post(f"{serving_url}/models/{name}/invocations",
                        json={"dataframe_records": example}, timeout=30)
    _model_failed(scored, "ValueError", "never fitted")


def test_a_version_answering_a_column_its_output_schema_lacks_answers_500_model_failed(
    serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    name = "zoo_extra_column"
    version = _register(name, MODELS / "extra_column.py")
    born = go_live(ctl, name, version, figures)  # today: live (no proof yet)
    example = [{"prompt": "hello"}]
    # In-process MLflow hands the extra column on: it never checks a prediction's outputs.
    assert list(in_process(name, version).predict(pd.DataFrame(example)).columns) == [
        "answer", "debug"]

    first = first_answer(serving_url, f"/models/{name}/serve", born, figures, post_json(example))
    _model_failed(first, "'debug'", "output schema")
    scored = httpx.post(f"{serving_url}/models/{name}/invocations",
                        json={"dataframe_records": example}, timeout=30)
    _model_failed(scored, "'debug'", "output schema")

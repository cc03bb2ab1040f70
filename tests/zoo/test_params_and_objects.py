"""A pyfunc with params and an ``Object`` input column (MLflow's ``Object``/``Property``), held to
its own in-process prediction (issue 17, "Real models in the tests").

The model (``models/people.py``, logged from code) reads ``person: {name: string, score:
double}`` and a ``scale`` param (default 1.0). Sent on ``/serve`` (the envelope, with and without
params) and on ``/invocations``; each answer is compared with ``predict`` of the same model URI
loaded here, on the same rows and params.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from tests.integration.conftest import ControllerHandle, problem
from tests.zoo.conftest import Figures
from tests.zoo.held import first_answer, frame_diff, go_live, in_process, post_json

MODEL = Path(__file__).parent / "models" / "people.py"
TOLERANCE = 0.0  # one multiplication of doubles, the same in any process
PEOPLE = [{"name": "ada", "score": 1.5}, {"name": "bo", "score": -0.25},
          {"name": "cy", "score": 1e-3}]


def _register(name: str) -> str:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import (
        ColSpec,
        DataType,
        Object,
        ParamSchema,
        ParamSpec,
        Property,
        Schema,
    )

    signature = ModelSignature(
        inputs=Schema([ColSpec(Object([Property("name", DataType.string),
                                       Property("score", DataType.double)]), "person")]),
        outputs=Schema([ColSpec(DataType.string, "greeting"),
                        ColSpec(DataType.double, "weighted")]),
        params=ParamSchema([ParamSpec("scale", DataType.double, 1.0)]),
    )
    example = pd.DataFrame({"person": [PEOPLE[0]]})
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL),
                                       signature=signature, input_example=(example, {"scale": 2.0}),
                                       pip_requirements=[], registered_model_name=name)
    return str(info.registered_model_version)


def _frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame({"person": [r["person"] for r in records]})


def test_a_pyfunc_with_params_and_an_object_input_answers_what_it_predicts_in_process(
    serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    name = "zoo_params_object"
    version = _register(name)
    born = go_live(ctl, name, version, figures)
    model = in_process(name, version)
    records = [{"person": p} for p in PEOPLE]
    serve = f"/models/{name}/serve"

    first = first_answer(serving_url, serve, born, figures,
                         post_json({"inputs": records, "params": {"scale": 4.0}}))
    assert first.status_code == 200, first.text
    scaled = frame_diff(first.json(), model.predict(_frame(records), params={"scale": 4.0}))
    figures("max |served - in-process| on /serve", scaled, "")
    assert scaled <= TOLERANCE

    # No params: the version's own default (1.0) applies, in sigserve as in MLflow.
    plain = httpx.post(f"{serving_url}{serve}", json=records, timeout=30)
    assert plain.status_code == 200, plain.text
    assert frame_diff(plain.json(), model.predict(_frame(records))) <= TOLERANCE

    scored = httpx.post(f"{serving_url}/models/{name}/invocations",
                        json={"dataframe_records": records, "params": {"scale": 4.0}}, timeout=30)
    assert scored.status_code == 200, scored.text
    assert frame_diff(scored.json()["predictions"],
                      model.predict(_frame(records), params={"scale": 4.0})) <= TOLERANCE

    # An object missing a required property is the client's error, named, never the model's.
    refused = httpx.post(f"{serving_url}{serve}", json={"person": {"name": "dee"}}, timeout=30)
    assert refused.status_code == 422, refused.text
    assert "person" in str(problem(refused)["errors"])

"""Tabular models through their own MLflow flavors, each answer held to the loaded model's own
in-process prediction on the same input (issue 17, "Real models in the tests").

- scikit-learn: a Pipeline (StandardScaler + LogisticRegression) on iris, logged with an input
  example (the signature is MLflow's, inferred from it), served as ``predict_proba``: on
  ``/serve``, ``/invocations`` with ``dataframe_split`` and with CSV;
- LightGBM through ``mlflow.lightgbm`` (a regressor).

Both also take 8 concurrent requests with different inputs: each answer is its own request's
prediction, whatever the batcher merged.
"""

from __future__ import annotations

import random
from typing import Any

import httpx
import numpy as np
import pandas as pd

from tests.integration.conftest import ControllerHandle
from tests.zoo.conftest import Figures
from tests.zoo.held import (
    concurrently,
    first_answer,
    go_live,
    in_process,
    max_abs_diff,
    post_json,
    predict_calls,
)

REQUESTS = 8
# The same float64 arithmetic in one process and another, on the same machine and libraries.
TOLERANCE = 1e-12


def _register_sklearn(name: str) -> tuple[str, pd.DataFrame]:
    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    iris = load_iris(as_frame=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    pipeline.fit(iris.data, iris.target)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            pipeline, name="model", input_example=iris.data.head(3),
            pyfunc_predict_fn="predict_proba", registered_model_name=name,
        )
    return str(info.registered_model_version), iris.data


def _bodies(frame: pd.DataFrame, seed: int) -> list[list[dict[str, Any]]]:
    """REQUESTS bodies of 1-3 different rows each, drawn from ``frame``, jittered."""
    draw = random.Random(seed)
    bodies = []
    for _ in range(REQUESTS):
        rows = frame.sample(draw.randint(1, 3), random_state=draw.randint(0, 10**6))
        rows = rows + np.round(draw.uniform(-0.5, 0.5), 3)
        bodies.append(rows.to_dict(orient="records"))
    return bodies


def _held_concurrently(url: str, model: Any, bodies: list[Any], figures: Figures,
                       name: str, version: str) -> None:
    calls = predict_calls(name, version)
    answers = concurrently(url, bodies)
    figures(f"predict calls for {REQUESTS} concurrent requests",
            predict_calls(name, version) - calls, "")
    worst = 0.0
    for body, answer in zip(bodies, answers, strict=True):
        assert answer.status_code == 200, answer.text
        worst = max(worst, max_abs_diff(answer.json(), model.predict(pd.DataFrame(body))))
    figures(f"max |served - in-process| over {REQUESTS} concurrent requests", worst, "")
    assert worst <= TOLERANCE


def test_a_sklearn_pipeline_answers_what_it_predicts_in_process(
    serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    name = "zoo_sklearn_pipeline"
    version, iris = _register_sklearn(name)
    born = go_live(ctl, name, version, figures)
    model = in_process(name, version)
    rows = iris.iloc[[0, 60, 120, 7]]
    expected = model.predict(rows)
    assert expected.shape == (4, 3)  # predict_proba: one probability per class

    body = rows.to_dict(orient="records")
    first = first_answer(serving_url, f"/models/{name}/serve", born, figures, post_json(body))
    assert first.status_code == 200, first.text
    served = max_abs_diff(first.json(), expected)
    figures("max |served - in-process| on /serve", served, "")
    assert served <= TOLERANCE

    invocations = f"{serving_url}/models/{name}/invocations"
    split = httpx.post(invocations, json={"dataframe_split": rows.to_dict(orient="split")
                                          | {"index": None}}, timeout=30)
    assert split.status_code == 200, split.text
    assert max_abs_diff(split.json()["predictions"], expected) <= TOLERANCE
    csv = httpx.post(invocations, content=rows.to_csv(index=False),
                     headers={"Content-Type": "text/csv"}, timeout=30)
    assert csv.status_code == 200, csv.text
    # CSV is text: the answer is the model's on the numbers as the CSV reader gives them back.
    read_back = pd.read_csv(__import__("io").StringIO(rows.to_csv(index=False)))
    assert max_abs_diff(csv.json()["predictions"], model.predict(read_back)) <= TOLERANCE

    _held_concurrently(f"{serving_url}/models/{name}/serve", model, _bodies(iris, 3), figures,
                       name, version)


def test_a_lightgbm_model_answers_what_it_predicts_in_process(
    serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    import lightgbm
    import mlflow.lightgbm

    name = "zoo_lightgbm"
    rng = np.random.default_rng(5)
    train = pd.DataFrame(rng.normal(size=(300, 4)), columns=["f0", "f1", "f2", "f3"])
    target = 2 * train.f0 - train.f1 * train.f2 + rng.normal(scale=0.1, size=300)
    regressor = lightgbm.LGBMRegressor(n_estimators=30, num_leaves=8, verbose=-1)
    regressor.fit(train, target)
    with mlflow.start_run():
        info = mlflow.lightgbm.log_model(regressor, name="model", input_example=train.head(3),
                                         registered_model_name=name)
    version = str(info.registered_model_version)
    born = go_live(ctl, name, version, figures)
    model = in_process(name, version)

    rows = train.iloc[:5]
    body = rows.to_dict(orient="records")
    first = first_answer(serving_url, f"/models/{name}/serve", born, figures, post_json(body))
    assert first.status_code == 200, first.text
    served = max_abs_diff(_values(first.json()), model.predict(rows))
    figures("max |served - in-process| on /serve", served, "")
    assert served <= TOLERANCE

    scored = httpx.post(f"{serving_url}/models/{name}/invocations",
                        json={"dataframe_records": body}, timeout=30)
    assert scored.status_code == 200, scored.text
    assert max_abs_diff(_values(scored.json()["predictions"]), model.predict(rows)) <= TOLERANCE

    bodies = _bodies(train, 9)
    calls = predict_calls(name, version)
    answers = concurrently(f"{serving_url}/models/{name}/serve", bodies)
    figures(f"predict calls for {REQUESTS} concurrent requests",
            predict_calls(name, version) - calls, "")
    worst = 0.0
    for b, answer in zip(bodies, answers, strict=True):
        assert answer.status_code == 200, answer.text
        worst = max(worst, max_abs_diff(_values(answer.json()),
                                        model.predict(pd.DataFrame(b))))
    figures(f"max |served - in-process| over {REQUESTS} concurrent requests", worst, "")
    assert worst <= TOLERANCE


def _values(answer: list[Any]) -> list[Any]:
    """A one-column output's values, whether answered bare or as ``{name: value}`` records."""
    return [next(iter(a.values())) if isinstance(a, dict) else a for a in answer]

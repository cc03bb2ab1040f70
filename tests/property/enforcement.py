"""MLflow's own enforcement, called the way MLflow calls it: the oracle of the property tests.

Two paths, both for a signature in ``ModelSignature.to_dict()`` form (or None, no signature):

- in-process: ``PyFuncModel.predict`` -> ``mlflow.pyfunc._validate_prediction_input``, which runs
  ``_enforce_schema`` on the data and ``_enforce_params_schema`` on the params;
- JSON: what ``mlflow models serve`` does for an ``application/json`` request
  (``scoring_server.invocations``): ``_parse_json_data`` with the model's input schema, then the
  same ``PyFuncModel.predict`` enforcement, inside the serving environment (this is also the body
  of ``mlflow.models.utils._validate_serving_input``).

Each answers an ``Outcome``: MLflow's error message (None when it accepts) and the data the model
would get. MLflow's WARNING logs (extra columns, dropped params) are silenced while it runs, and
only then.
"""

# MLflow's enforcement functions carry no annotations; calling them is the point of this module.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.pyfunc import _validate_prediction_input
from mlflow.pyfunc.scoring_server import _parse_json_data
from mlflow.pyfunc.utils.environment import _simulate_serving_environment

SignatureDict = dict[str, Any]


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@lru_cache(maxsize=512)
def _model(inputs: str | None, outputs: str | None, params: str | None) -> Model:
    if inputs is None and outputs is None and params is None:
        return Model()
    return Model(
        signature=ModelSignature.from_dict({"inputs": inputs, "outputs": outputs, "params": params})
    )


def model_for(signature: SignatureDict | None) -> Model:
    """The metadata a served model with this signature has (cached: signatures repeat)."""
    if signature is None:
        return _model(None, None, None)
    return _model(signature.get("inputs"), signature.get("outputs"), signature.get("params"))


@dataclass(frozen=True)
class Outcome:
    """What MLflow made of a request: its error (None: accepted) and, when accepted, the data
    the model would get."""

    error: str | None
    data: Any = None

    @property
    def rows(self) -> int | None:
        """How many records the model gets, when it gets a DataFrame."""
        return len(self.data) if isinstance(self.data, pd.DataFrame) else None


def _run(call: Callable[[], Any]) -> Outcome:
    try:
        with quiet_mlflow():
            data = call()
    except Exception as exc:  # MLflow's refusals are MlflowException; pandas' leak through too
        message = getattr(exc, "message", None) or str(exc)
        return Outcome(f"{type(exc).__name__}: {message}")
    return Outcome(None, data)


def enforce_in_process(
    signature: SignatureDict | None, data: Any, params: dict[str, Any] | None
) -> Outcome:
    """What ``PyFuncModel.predict(data, params)`` does before the model runs."""
    meta = model_for(signature)

    def call() -> Any:
        return _validate_prediction_input(
            data, params, meta.get_input_schema(), meta.get_params_schema()
        )[0]

    return _run(call)


def enforce_json(signature: SignatureDict | None, body: str) -> Outcome:
    """What ``mlflow models serve`` does with a JSON body before the model runs."""
    meta = model_for(signature)

    def call() -> Any:
        parsed = _parse_json_data(body, meta, meta.get_input_schema())
        with _simulate_serving_environment():
            return _validate_prediction_input(
                parsed.data, parsed.params, meta.get_input_schema(), meta.get_params_schema()
            )[0]

    return _run(call)

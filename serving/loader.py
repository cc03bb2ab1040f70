"""Loading MLflow pyfunc models and calling them; no Ray in here.

``models:/{name}/{version}`` is resolved against the registry MLflow is configured for (the
standard ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI`` variables, which ``build_app``
forwards to the model replicas). Loading and predicting block (file and network I/O, model
code), so both run in a worker thread and the replica keeps serving other models meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import mlflow.pyfunc
from mlflow.exceptions import MlflowException

from serving.exceptions import ModelRejectedInput, ModelUnavailable

logger = logging.getLogger(__name__)

_DETAIL_LIMIT = 500


def split_model_id(model_id: str) -> tuple[str, str]:
    """``"name/version"`` -> ``(name, version)``; a model name may itself contain "/"."""
    name, sep, version = model_id.rpartition("/")
    if not sep or not name or not version:
        raise ModelUnavailable(f"malformed model id {model_id!r}; expected 'name/version'")
    return name, version


class PyfuncLoader:
    """Loads versions on demand and remembers, in order, every version it tried to load.

    Attempts, not successes, are what is remembered: "a quarantined version is never loaded"
    must hold for a load that failed too.
    """

    def __init__(self) -> None:
        self._attempts: list[str] = []

    @property
    def attempts(self) -> list[str]:
        return list(self._attempts)

    async def load(self, model_id: str) -> Any:
        name, version = split_model_id(model_id)
        self._attempts.append(model_id)
        try:
            model = await asyncio.to_thread(mlflow.pyfunc.load_model, f"models:/{name}/{version}")
        except Exception as exc:
            logger.exception("loading %s failed", model_id)
            raise ModelUnavailable(
                f"version {version} of {name!r} could not be loaded: {exc}"[:_DETAIL_LIMIT],
                model=name,
                version=version,
            ) from None
        logger.info("loaded %s", model_id)
        return model


async def predict(model: Any, data: Any, params: dict[str, Any] | None) -> Any:
    """Call ``model.predict``; MLflow refusing the input or params becomes a 422."""
    try:
        return await asyncio.to_thread(model.predict, data, params=params or None)
    except MlflowException as exc:
        if exc.error_code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
            raise ModelRejectedInput(exc.message[:_DETAIL_LIMIT]) from None
        raise

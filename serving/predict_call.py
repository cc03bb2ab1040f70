"""One predict call on a loaded model, its errors told as the API answers them.

MLflow refusing the input or params is a 422; anything the model's own code raises is a 500
that names the exception, never a stack trace. No Ray.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mlflow.exceptions import MlflowException

from serving.exceptions import ModelFailed, ModelRejectedInput, ModelUnavailable
from serving.loader import LoadedModel, detail

logger = logging.getLogger(__name__)


def call(loaded: LoadedModel, data: Any, params: dict[str, Any] | None) -> Any:
    """Call the model's ``predict`` here (it blocks).

    MLflow refusing the input or params is a 422; anything the model's own code raises is a
    500 that names the exception, never a stack trace.
    """
    try:
        return loaded.model.predict(data, params=params or None)
    except ModelUnavailable:
        raise  # an environment of its own that is down (serving.environment_errors): a 503
    except MlflowException as exc:
        if exc.error_code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
            raise ModelRejectedInput(detail(exc.message)) from None
        raise ModelFailed(detail(f"MLflow failed to predict: {exc.message}")) from None
    except Exception as exc:
        logger.warning("predict raised %s: %s", type(exc).__name__, detail(str(exc)))
        raise ModelFailed(detail(f"the model raised {type(exc).__name__}: {exc}")) from None


async def predict(loaded: LoadedModel, data: Any, params: dict[str, Any] | None) -> Any:
    """``call`` in a worker thread, so the replica serves other requests meanwhile."""
    return await asyncio.to_thread(call, loaded, data, params)

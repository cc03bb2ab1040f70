"""The model deployment: a multiplexed LRU of pyfunc models, keyed ``name/version``.

The ingress picks the version and sets it as the request's multiplexed model id; Ray Serve then
prefers a replica that already holds it, and ``@serve.multiplexed`` loads it here on a miss
(concurrent requests for the same id share one load) and evicts the least recently used
version past ``max_num_models_per_replica``. This deployment trusts the ingress: it loads
whatever id it is given, so the fail-closed check lives in one place, before the handle call.

``serve.multiplexed`` fixes its limit when it wraps a function. Wrapping at class definition
would freeze the limit at import time, so the wrapper is made per replica in ``__init__``
(Ray 2.60 detects a multiplexed loader stored on the instance).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ray import serve

from serving.loader import PyfuncLoader, predict


class ModelRunner:
    def __init__(self, max_num_models_per_replica: int = 2) -> None:
        self._loader = PyfuncLoader()

        # A plain closure, not a bound method: the multiplex wrapper stores its LRU as an
        # attribute of the function it wraps, which a bound method cannot carry.
        async def load(model_id: str) -> Any:
            return await self._loader.load(model_id)

        self._get_model: Callable[[str], Awaitable[Any]] = serve.multiplexed(
            max_num_models_per_replica=max_num_models_per_replica
        )(load)

    async def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        model_id = serve.get_multiplexed_model_id()
        if not model_id:
            raise ValueError("ModelRunner.predict needs a multiplexed model id ('name/version')")
        model = await self._get_model(model_id)
        return await predict(model, data, params)

    def loads(self) -> list[str]:
        """Every model id this replica tried to load, in order, failed tries and reloads too."""
        return self._loader.attempts

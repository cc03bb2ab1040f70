"""The model deployment: a multiplexed LRU of pyfunc models, keyed by artifact.

The ingress picks the version and sets its multiplexed model id, ``name/version@key`` (see
``serving.loader``: the key changes whenever the checked artifact does), and passes the
artifact's ``source`` and ``MLmodel`` digest along with the data. Ray Serve prefers a replica
that already holds the id, and ``@serve.multiplexed`` loads it here on a miss (concurrent
requests for the same id share one load) and evicts the least recently used model past
``max_num_models_per_replica``. This deployment trusts the ingress's decision (the fail-closed
check lives in one place, before the handle call) but not the artifact: it loads exactly the
source it is given and refuses one whose ``MLmodel`` is not the one the controller checked.

``serve.multiplexed`` fixes its limit when it wraps a function. Wrapping at class definition
would freeze the limit at import time, so the wrapper is made per replica in ``__init__``
(Ray 2.60 detects a multiplexed loader stored on the instance).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ray import serve

from serving.loader import Artifact, LoadedModel, PyfuncLoader, Refusal, bind, predict


class ModelRunner:
    def __init__(self, max_num_models_per_replica: int = 2) -> None:
        self._loader = PyfuncLoader()
        # The multiplexed loader is called with the model id alone. Each entry is written by
        # ``predict`` before the load it serves, and ``bind`` makes an id name one artifact
        # only, so an entry is never stale; the map grows with the artifacts this replica was
        # asked for, a few short strings each.
        self._artifacts: dict[str, Artifact] = {}

        # A plain closure, not a bound method: the multiplex wrapper stores its LRU as an
        # attribute of the function it wraps, which a bound method cannot carry.
        async def load(model_id: str) -> LoadedModel:
            return await self._loader.load(model_id, self._artifacts[model_id])

        self._get_model: Callable[[str], Awaitable[LoadedModel]] = serve.multiplexed(
            max_num_models_per_replica=max_num_models_per_replica
        )(load)

    async def predict(
        self, data: Any, params: dict[str, Any] | None, source: str, mlmodel_digest: str
    ) -> Any:
        model_id = serve.get_multiplexed_model_id()
        if not model_id:
            raise ValueError("ModelRunner.predict needs a multiplexed model id")
        artifact = Artifact(source, mlmodel_digest)
        bind(model_id, artifact)
        self._artifacts[model_id] = artifact
        model = await self._get_model(model_id)
        return await predict(model, data, params)

    def loads(self) -> list[str]:
        """Every model id this replica tried to load, in order, failed tries and reloads too."""
        return self._loader.attempts

    def refusals(self) -> list[Refusal]:
        """Every load refused because the artifact was not the one the controller checked."""
        return self._loader.refusals

"""The ingress deployment: the HTTP API of ``serving.api`` running as a Ray Serve replica.

It only routes: the FastAPI app validates and resolves, and the model runner behind a
``DeploymentHandle`` does the work. The app is built per replica (``__serve_build_asgi_app__``,
called after ``__init__``), so nothing (no HTTP client, no table) exists at import time, and
each replica restores its table from the GCS and then long-polls the controller.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle

from serving.api import create_app
from serving.exceptions import SigserveError
from serving.gcs_store import GcsTableStore
from serving.resolve import Target
from serving.settings import ServingSettings
from serving.table_source import TableSource


class HandleBackend:
    """Runs a version on the model runner deployment, routed by its multiplexed model id.

    The artifact travels with the request: the runner loads exactly that source and checks
    its ``MLmodel`` digest, so what runs is what the controller decided on.
    """

    def __init__(self, runner: DeploymentHandle[Any]) -> None:
        self._runner = runner

    async def predict(self, target: Target, data: Any, params: dict[str, Any] | None) -> Any:
        artifact = target.artifact
        try:
            handle = self._runner.options(multiplexed_model_id=target.model_id)
            return await handle.predict.remote(
                data, params, artifact.source, artifact.mlmodel_digest
            )
        except RayTaskError as exc:
            # Our own errors (model not loadable, input refused by MLflow) keep their class, so
            # the problem handlers answer them; anything else stays a 500.
            if isinstance(exc.cause, SigserveError):
                raise exc.cause from None
            raise


@serve.ingress()
class Ingress:
    def __init__(self, runner: DeploymentHandle[Any], settings: ServingSettings) -> None:
        self._runner = runner
        self._settings = settings

    def __serve_build_asgi_app__(self) -> FastAPI:
        settings = self._settings
        source = TableSource(
            settings.controller_url,
            poll_timeout_s=settings.table_poll_timeout_s,
            store=GcsTableStore(settings.app_name),
        )
        return create_app(
            source, HandleBackend(self._runner), startup_wait_s=settings.table_startup_wait_s
        )

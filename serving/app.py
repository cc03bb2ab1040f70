"""Assembling the Serve application: one deployment that answers the API and holds the models.

    from ray import serve
    from serving.app import build_app
    from serving.settings import ServingSettings

    settings = ServingSettings()                      # SIGSERVE_* from the environment
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(build_app(settings), name=settings.app_name, route_prefix="/")

``build_app`` also works as a Serve config ``import_path: serving.app:build_app`` (its ``args``
become settings). MLflow's ``MLFLOW_*`` variables of the building process are forwarded to the
replicas, which is how they find the registry. The fast path (direct ingress through HAProxy,
Ray's throughput-optimized mode) is a property of the Ray cluster, set in the environment
before Ray starts: see ``sigserve.stack.fast_path_env``.
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve
from ray.serve import Application

from serving.server import Server
from serving.settings import ServingSettings

DEPLOYMENT = "Server"


def build_app(settings: ServingSettings | dict[str, Any] | None = None) -> Application:
    if not isinstance(settings, ServingSettings):
        settings = ServingSettings(**(settings or {}))
    mlflow_env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    actor: dict[str, Any] = {"num_cpus": settings.replica_num_cpus}
    if mlflow_env:
        actor["runtime_env"] = {"env_vars": mlflow_env}
    return serve.deployment(
        name=DEPLOYMENT,
        num_replicas=settings.replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        ray_actor_options=actor,
    )(Server).bind(settings)

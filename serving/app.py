"""Assembling the Serve application: an ingress bound to a multiplexed model runner.

    from ray import serve
    from serving.app import build_app
    from serving.settings import ServingSettings

    settings = ServingSettings()                      # SIGSERVE_* from the environment
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(build_app(settings), name=settings.app_name, route_prefix="/")

``build_app`` also works as a Serve config ``import_path: serving.app:build_app`` (its ``args``
become settings). MLflow's ``MLFLOW_*`` variables of the building process are forwarded to the
model replicas, which is how they find the registry.
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve
from ray.serve import Application

from serving.ingress import Ingress
from serving.model_runner import ModelRunner
from serving.settings import ServingSettings

INGRESS_DEPLOYMENT = "Ingress"
MODEL_DEPLOYMENT = "ModelRunner"

# The ingress mostly awaits the runner, so one replica holds many requests; the runner's
# requests hold a thread each while the model predicts.
_INGRESS_MAX_ONGOING = 256
_RUNNER_MAX_ONGOING = 16


def build_app(settings: ServingSettings | dict[str, Any] | None = None) -> Application:
    if not isinstance(settings, ServingSettings):
        settings = ServingSettings(**(settings or {}))
    mlflow_env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    runner_actor: dict[str, Any] = {"num_cpus": settings.replica_num_cpus}
    if mlflow_env:
        runner_actor["runtime_env"] = {"env_vars": mlflow_env}
    runner = serve.deployment(
        name=MODEL_DEPLOYMENT,
        num_replicas=settings.model_replicas,
        max_ongoing_requests=_RUNNER_MAX_ONGOING,
        ray_actor_options=runner_actor,
    )(ModelRunner).bind(settings.max_num_models_per_replica)
    return serve.deployment(
        name=INGRESS_DEPLOYMENT,
        num_replicas=settings.ingress_replicas,
        max_ongoing_requests=_INGRESS_MAX_ONGOING,
        ray_actor_options={"num_cpus": settings.replica_num_cpus},
    )(Ingress).bind(runner, settings)

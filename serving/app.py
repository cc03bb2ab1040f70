"""Assembling the Serve application: one deployment that answers the API and holds the models.

    from ray import serve
    from serving.app import build_app
    from serving.settings import ServingSettings

    settings = ServingSettings()                      # SIGSERVE_* from the environment
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(build_app(settings), name=settings.app_name, route_prefix="/")

``build_app`` also works as a Serve config ``import_path: serving.app:build_app`` (its ``args``
become settings). MLflow's ``MLFLOW_*`` and Hugging Face's ``HF_*``/``TRANSFORMERS_*`` variables
of the building process are forwarded to the replicas, which is how they find the registry on
any node. The fast path (direct ingress through HAProxy, Ray's throughput-optimized mode) is a
property of the Ray cluster, set in the environment before Ray starts: see
``sigserve.stack.fast_path_env`` and ``sigserve.cluster``.
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve
from ray.serve import Application

from serving.server import Server
from serving.settings import ServingSettings

DEPLOYMENT = "Server"


# Variables a replica must see to load models: MLflow's (the registry, its credentials) and
# Hugging Face's (``HF_HUB_OFFLINE``, the cache). Replicas may run on nodes whose own
# environment never had them, so they travel with the deployment.
FORWARDED_ENV_PREFIXES = ("MLFLOW_", "HF_", "TRANSFORMERS_")

# MLflow's own HTTP defaults (7 retries, backoff factor 2, 120 s per read) make a download from
# a store that is down take minutes before it fails, and a replica loads one model at a time:
# every request for a model not yet loaded would wait that long instead of getting its 503 with
# Retry-After, and the replica's loader backs off and tries again anyway. A value the operator
# set wins.
REPLICA_MLFLOW_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def forwarded_env() -> dict[str, str]:
    forwarded = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    return {**REPLICA_MLFLOW_DEFAULTS, **forwarded}


def build_app(settings: ServingSettings | dict[str, Any] | None = None) -> Application:
    if not isinstance(settings, ServingSettings):
        settings = ServingSettings(**(settings or {}))
    actor: dict[str, Any] = {"num_cpus": settings.replica_num_cpus}
    if settings.replica_resources:
        actor["resources"] = dict(settings.replica_resources)
    if env := forwarded_env():
        actor["runtime_env"] = {"env_vars": env}
    scaling: dict[str, Any] = {"num_replicas": settings.replicas}
    if (autoscaling := settings.autoscaling_config()) is not None:
        # Ray refuses a fixed ``num_replicas`` next to an autoscaling config.
        scaling = {"autoscaling_config": autoscaling}
    return serve.deployment(
        name=DEPLOYMENT,
        max_ongoing_requests=settings.max_ongoing_requests,
        ray_actor_options=actor,
        **scaling,
    )(Server).bind(settings)

"""Assembling the Serve application: one deployment that answers the API and holds the models.

    from ray import serve
    from serving.app import build_app
    from serving.settings import ServingSettings

    settings = ServingSettings()                      # SIGSERVE_* from the environment
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(build_app(settings), name=settings.app_name, route_prefix="/")

``build_app`` also works as a Serve config ``import_path: serving.app:build_app`` (its ``args``
become settings). The MLflow and Hugging Face client variables named in ``FORWARDED_ENV`` (and
``SIGSERVE_FORWARD_ENV``) of the building process are forwarded to the replicas, which is how
they find the registry on any node. The fast path (direct ingress through HAProxy, Ray's
throughput-optimized mode) is a property of the Ray cluster, set in the environment before Ray
starts: see
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


# Variables a replica must see to load models, by name: where the registry is and how to reach
# it (MLflow's client settings: tracking and registry URI, credentials, TLS, HTTP retries,
# downloads) and Hugging Face's (``HF_HUB_OFFLINE``, the cache). Replicas may run on nodes whose
# own environment never had them, so they travel with the deployment. Named rather than by
# prefix: a process that also runs MLflow's server (``MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY``,
# ``MLFLOW_FLASK_SERVER_SECRET_KEY``, its database URIs) must not hand those to model code
# (docs/security.md). ``SIGSERVE_FORWARD_ENV`` adds names.
FORWARDED_ENV = frozenset({
    "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_WORKSPACE",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_ARTIFACT_UPLOAD_DOWNLOAD_TIMEOUT",
    "MLFLOW_DOWNLOAD_CHUNK_TIMEOUT", "MLFLOW_ENABLE_MULTIPART_DOWNLOAD",
    "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_S3_IGNORE_TLS", "MLFLOW_GCS_DOWNLOAD_CHUNK_SIZE",
    "HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_TOKEN",
    "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE",
    # Read by serving.environments and serving.environment_isolated (docs/operations.md).
    "SIGSERVE_ENVIRONMENT_IDLE_TTL_S", "SIGSERVE_ENVIRONMENT_HOST_MAX_RESTARTS",
    "SIGSERVE_ENVIRONMENT_HOST_RESTART_WINDOW_S",
})  # fmt: skip

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


def forwarded_env(extra: tuple[str, ...] = ()) -> dict[str, str]:
    names = FORWARDED_ENV.union(extra)
    forwarded = {k: v for k, v in os.environ.items() if k in names}
    return {**REPLICA_MLFLOW_DEFAULTS, **forwarded}


def build_app(settings: ServingSettings | dict[str, Any] | None = None) -> Application:
    if not isinstance(settings, ServingSettings):
        settings = ServingSettings(**(settings or {}))
    actor: dict[str, Any] = {"num_cpus": settings.replica_num_cpus}
    if settings.replica_resources:
        actor["resources"] = dict(settings.replica_resources)
    if env := forwarded_env(settings.forward_env):
        actor["runtime_env"] = {"env_vars": env}
    scaling: dict[str, Any] = {"num_replicas": settings.replicas}
    if (autoscaling := settings.autoscaling_config()) is not None:
        # Ray refuses a fixed ``num_replicas`` next to an autoscaling config.
        scaling = {"autoscaling_config": autoscaling}
    return serve.deployment(
        name=DEPLOYMENT,
        max_ongoing_requests=settings.max_ongoing_requests,
        logging_config={"enable_access_log": settings.access_log},
        ray_actor_options=actor,
        **scaling,
    )(Server).bind(settings)

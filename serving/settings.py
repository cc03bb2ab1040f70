"""Settings of the serving app, read from ``SIGSERVE_*`` environment variables.

They are read by whoever builds the application (``serving.app.build_app``) and travel to the
replicas inside the bound deployment, so a replica never depends on its own environment for
them. MLflow's own settings (``MLFLOW_TRACKING_URI``...) are not here: MLflow reads them itself,
and ``build_app`` forwards the ones it names (``serving.app.FORWARDED_ENV``, plus
``forward_env``) to the model replicas.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIGSERVE_", extra="ignore")

    controller_url: str = "http://127.0.0.1:8080"
    # The controller's token for serving replicas: a replica polls the routing table with it,
    # checks each table's signature with a key derived from it, and reports artifacts it could
    # not load (``serving.load_reports``). Unset, a replica refuses to start (docs/security.md).
    serving_token: SecretStr | None = None
    app_name: str = "sigserve"
    # More variables of the building process for the replicas, by name, comma-separated
    # (``AWS_PROFILE,MLFLOW_S3_UPLOAD_EXTRA_ARGS``): beyond ``serving.app.FORWARDED_ENV``.
    forward_env: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("forward_env", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    max_num_models_per_replica: int = Field(default=2, ge=1)
    # Replicas of the one serving deployment; each holds the table and its own models.
    replicas: int = Field(default=1, ge=1)
    replica_num_cpus: float = Field(default=0.1, ge=0)
    # Custom Ray resources each replica needs (JSON in the environment, ``{"serving": 1}``): how
    # replicas are kept to the nodes that should hold models on a shared cluster.
    replica_resources: dict[str, float] = Field(default_factory=dict)
    # Autoscaling, on when a maximum is set: Ray Serve then keeps between the minimum and the
    # maximum replicas, aiming at this many requests in flight per replica (``replicas`` is
    # ignored). Not below 1: every replica long-polls the controller and warms the defaults, so
    # a scale from zero would make the first request wait for a replica start and model loads.
    autoscaling_min_replicas: int = Field(default=1, ge=1)
    autoscaling_max_replicas: int | None = Field(default=None, ge=1)
    # A quarter of ``max_ongoing_requests``: requests in flight are what batches form from, and
    # Ray's default target (2) would add replicas at a load one replica batches easily.
    autoscaling_target_ongoing_requests: float = Field(default=16.0, gt=0)
    # Requests one replica takes at once. Ray's default (5) makes 16 clients queue in the
    # proxy with 25-500 ms backoffs; more in flight also means bigger batches.
    max_ongoing_requests: int = Field(default=64, ge=1)
    # Ray Serve's access log, a line per request in the replica's Serve log (method, route,
    # status, latency, Ray's request id): ~17-22 us of a replica's CPU per request, and what it
    # says is in sigserve's metrics (per model, version and status), so off unless asked for.
    access_log: bool = False
    # Records per predict call, unless the model's tag ``sigserve.max_batch_size`` says.
    max_batch_size: int = Field(default=32, ge=1)
    # How long a batch that is not full may wait for more (0: take what is queued, never wait).
    batch_wait_ms: float = Field(default=0.0, ge=0)
    # A call of at most 64 rows whose per-row moving average times its rows is under this is
    # made on the event loop: for tiny models a hop to a worker thread costs more than the
    # call (serving.batching; a large call never is, however fast the model).
    inline_predict_below_ms: float = Field(default=1.0, ge=0)
    # How long one predict call may take before its callers get 504 and its version takes no
    # work (503) until the call returns; MLflow's scoring server's default. Per model: the tag
    # ``sigserve.predict_timeout_s``. A thread cannot be stopped: see ``serving.deadlines``.
    predict_timeout_s: float = Field(default=60.0, gt=0)
    # Predict calls a replica may have hanging past their deadline before its health check
    # fails and Ray Serve replaces it (each holds one of the replica's few worker threads).
    max_wedged_predicts: int = Field(default=2, ge=0)
    # What one request may carry: a larger body is 413 as it arrives, more records a 422.
    max_body_mb: int = Field(default=16, ge=1)
    max_records: int = Field(default=10_000, ge=1)
    # Load a version before its model's default switches to it (the old default answers
    # meanwhile; serving.table_source).
    warm_defaults: bool = True
    warm_timeout_s: float = Field(default=120.0, gt=0)
    # How long the controller may hold one long-poll open before answering 204.
    table_poll_timeout_s: float = Field(default=30.0, gt=0)
    # The replicas' log files (``sigserve_<app>_<replica>.log`` in Ray's session logs): JSON
    # lines unless ``text`` (``wire.logs``; SIGSERVE_LOG_FORMAT).
    log_format: Literal["json", "text"] | None = None
    # How long a starting ingress replica waits for its first table (from the key-value store
    # or the controller) before it reports ready anyway and answers 503 until one arrives.
    table_startup_wait_s: float = Field(default=5.0, ge=0)

    # Environments of a version's own (``serving.environments``): how long one build may take
    # (resolving its requirements, Ray cloning the serving venv, uv installing them; the first
    # build measured ~21 s here) before its version's proof fails, how many builds one replica
    # runs at once (each clones the serving venv: disk and CPU), and the CPUs each environment's
    # actor reserves (0: it shares the node's, as the replicas' threads do).
    environment_build_timeout_s: float = Field(default=600.0, gt=0)
    environment_build_concurrency: int = Field(default=1, ge=1)
    environment_num_cpus: float = Field(default=0.0, ge=0)

    # The model MLflow's root routes answer for (``/invocations``, ``/ping``, ``/health``,
    # ``/version``), as a one-model ``mlflow models serve`` does: what SageMaker- and
    # Databricks-style clients call. Unset, those routes do not exist (404).
    default_model: str | None = None

    @model_validator(mode="after")
    def _autoscaling_bounds(self) -> ServingSettings:
        top = self.autoscaling_max_replicas
        if top is not None and top < self.autoscaling_min_replicas:
            raise ValueError(
                f"autoscaling_max_replicas ({top}) is below autoscaling_min_replicas "
                f"({self.autoscaling_min_replicas})"
            )
        return self

    def autoscaling_config(self) -> dict[str, float] | None:
        """Ray Serve's ``autoscaling_config``, or None for a fixed ``replicas``."""
        if self.autoscaling_max_replicas is None:
            return None
        return {
            "min_replicas": self.autoscaling_min_replicas,
            "max_replicas": self.autoscaling_max_replicas,
            "target_ongoing_requests": self.autoscaling_target_ongoing_requests,
        }

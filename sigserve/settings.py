"""Settings of the local stack (``sigserve up``), from ``SIGSERVE_*`` environment variables.

One settings story: each part reads its own settings from the environment it runs in
(``controller.settings.ControllerSettings``, ``serving.settings.ServingSettings``), and these are
only what the local stack itself decides, where its parts listen and which secrets they share.
A ``SIGSERVE_*`` variable of any part set for ``sigserve up`` reaches that part unchanged
(``SIGSERVE_RESYNC_INTERVAL_S`` the controller, ``SIGSERVE_MAX_BATCH_SIZE`` the replicas); the
stack sets only the addresses it chose and the secrets, and a secret set here wins over the one
it would generate.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from controller.settings import Secret


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIGSERVE_", extra="ignore")

    home: Path = Path(".sigserve")
    host: str = "127.0.0.1"
    mlflow_port: int = 5000
    serving_port: int = 8000
    # The Open Inference Protocol's gRPC service (``sigserve.stack.grpc_options``); 0: off.
    # With the fast path HAProxy binds it on ``host``, as the serving port. Off by default:
    # Ray 2.60 also binds each replica's gRPC server and its fallback proxy's on every
    # interface, whatever ``host`` says (docs/security.md), so a user opts in, e.g. 8001.
    grpc_port: int = Field(default=0, ge=0, le=65535)
    controller_port: int = 8080
    # Where Ray serves the serving replicas' metrics (Prometheus text, /metrics).
    metrics_port: int = 8090
    # Generated once and kept in ``home``/secrets.json when unset; one set here is refused when
    # shorter than the controller takes (controller.settings.MIN_SECRET_CHARS).
    admin_token: Secret | None = None
    webhook_secret: Secret | None = None
    serving_token: Secret | None = None
    ray_num_cpus: int | None = None
    # Ray Serve's direct ingress through HAProxy and its throughput-optimized mode
    # (``sigserve.stack.fast_path_env``); false: Ray's Python proxy.
    fast_path: bool = True
    register_demo_models: bool = True

    def grpc_listen_port(self) -> int:
        """The gRPC port the stack starts, 0 for none: ``grpc_port`` as set."""
        return self.grpc_port

    def chosen(self, name: str, generated: str) -> str:
        """The secret ``name`` as set for the stack, else the generated one."""
        value: SecretStr | None = getattr(self, name)
        return value.get_secret_value() if value is not None else generated

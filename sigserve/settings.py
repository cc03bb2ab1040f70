"""Settings of the local stack (``sigserve up``), from ``SIGSERVE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIGSERVE_", extra="ignore")

    home: Path = Path(".sigserve")
    host: str = "127.0.0.1"
    mlflow_port: int = 5000
    serving_port: int = 8000
    controller_port: int = 8080
    # Generated and kept under ``home`` when unset.
    admin_token: SecretStr | None = None
    resync_interval_s: float = Field(default=30.0, gt=0)
    max_num_models_per_replica: int = Field(default=2, ge=1)
    ray_num_cpus: int | None = None
    # Ray Serve's direct ingress through HAProxy and its throughput-optimized mode
    # (``sigserve.stack.fast_path_env``); false: Ray's Python proxy.
    fast_path: bool = True
    register_demo_models: bool = True

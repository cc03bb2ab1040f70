"""Replica counts, autoscaling and placement of the serving deployment, from SIGSERVE_*."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.app import forwarded_env
from serving.settings import ServingSettings
from sigserve.cluster import ClusterError, resolve_address


def test_fixed_replicas_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGSERVE_REPLICAS", "3")
    settings = ServingSettings()
    assert settings.replicas == 3
    assert settings.autoscaling_config() is None
    assert settings.replica_resources == {}


def test_autoscaling_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGSERVE_AUTOSCALING_MIN_REPLICAS", "2")
    monkeypatch.setenv("SIGSERVE_AUTOSCALING_MAX_REPLICAS", "5")
    monkeypatch.setenv("SIGSERVE_AUTOSCALING_TARGET_ONGOING_REQUESTS", "8")
    monkeypatch.setenv("SIGSERVE_REPLICA_RESOURCES", '{"serving": 0.5}')
    settings = ServingSettings()
    assert settings.autoscaling_config() == {
        "min_replicas": 2, "max_replicas": 5, "target_ongoing_requests": 8.0,
    }
    assert settings.replica_resources == {"serving": 0.5}


def test_a_maximum_below_the_minimum_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGSERVE_AUTOSCALING_MIN_REPLICAS", "3")
    monkeypatch.setenv("SIGSERVE_AUTOSCALING_MAX_REPLICAS", "2")
    with pytest.raises(ValidationError, match="below autoscaling_min_replicas"):
        ServingSettings()


def test_mlflow_and_hugging_face_variables_travel_to_the_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SIGSERVE_ADMIN_TOKEN", "not for replicas")
    env = forwarded_env()
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert "SIGSERVE_ADMIN_TOKEN" not in env


def test_mlflows_server_secrets_do_not_reach_the_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    # Compose's serve container once handed MLflow's webhook-encryption key to model code.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow-gateway:5000")
    monkeypatch.setenv("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", "k" * 44)
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "f" * 32)
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", "postgresql://mlflow:pw@db/mlflow")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AWS_PROFILE", "models")
    env = forwarded_env()
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow-gateway:5000"
    assert env["HF_HUB_OFFLINE"] == "1"
    for secret in ("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", "MLFLOW_FLASK_SERVER_SECRET_KEY",
                   "MLFLOW_BACKEND_STORE_URI", "AWS_PROFILE"):
        assert secret not in env, secret
    # An operator names what else the replicas need.
    monkeypatch.setenv("SIGSERVE_FORWARD_ENV", "AWS_PROFILE, MLFLOW_S3_UPLOAD_EXTRA_ARGS")
    assert forwarded_env(ServingSettings().forward_env)["AWS_PROFILE"] == "models"


def test_replicas_give_up_on_a_store_that_is_down_in_seconds_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # MLflow's defaults (7 retries, backoff 2, 120 s) hold a load of a store that is down for
    # minutes; the replica's 503 with Retry-After must come first.
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    env = forwarded_env()
    assert int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) <= 2
    assert int(env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]) <= 1
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"  # the operator's value wins


def test_an_address_is_needed_and_never_starts_a_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ClusterError, match="RAY_ADDRESS"):
        resolve_address(None)
    with pytest.raises(ClusterError, match="sigserve up"):
        resolve_address("local")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert resolve_address(None) == "ray://head:10001"
    assert resolve_address("head:6379") == "head:6379"


def test_auto_is_only_a_cluster_that_ray_start_recorded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with pytest.raises(ClusterError, match="no cluster started by `ray start`"):
        resolve_address("auto")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.0.0.5:6379\n")
    assert resolve_address("auto") == "10.0.0.5:6379"

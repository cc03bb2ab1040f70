"""MLflow's HTTP connection pool covers what the controller asks of it at once: its passes,
the write-back lane and the other calls (``controller.worker.registry_connections``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.environment_variables import MLFLOW_HTTP_POOL_MAXSIZE
from mlflow.utils import request_utils

from controller.app import build_services
from controller.worker import WRITE_BACK_CONCURRENCY, registry_connections
from tests.unit.test_controller_http import _settings

VARIABLE = "MLFLOW_HTTP_POOL_MAXSIZE"


def _pool_maxsize() -> int:
    """The pool size of a session MLflow's REST client would make now (its cache bypassed:
    a session made earlier in this process keeps the size it was made with)."""
    session = request_utils._cached_get_request_session.__wrapped__(
        0, 2, 1.0, (), False, _pid=0
    )
    size: int = session.get_adapter("http://127.0.0.1").__dict__["_pool_maxsize"]
    return size


def test_the_pool_holds_the_passes_and_the_write_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    concurrency = 30  # not the default: the size follows the setting
    monkeypatch.setenv(VARIABLE, "unset")  # recorded, so the value the test makes is undone
    monkeypatch.delenv(VARIABLE)
    svc = build_services(_settings(tmp_path, reconcile_concurrency=concurrency))
    try:
        wanted = registry_connections(concurrency)
        assert wanted >= concurrency + WRITE_BACK_CONCURRENCY
        # Read as MLflow reads it, and what its sessions are then made with (the default was 10:
        # 8 passes and 4 write-backs asked 12).
        assert MLFLOW_HTTP_POOL_MAXSIZE.get() == wanted
        assert _pool_maxsize() == wanted
    finally:
        svc.engine.dispose()


def test_an_operators_pool_size_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, "64")
    svc = build_services(_settings(tmp_path))
    try:
        assert MLFLOW_HTTP_POOL_MAXSIZE.get() == 64
    finally:
        svc.engine.dispose()

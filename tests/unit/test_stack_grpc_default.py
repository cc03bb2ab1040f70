"""`sigserve up` serves gRPC on 8001 by default (``SIGSERVE_GRPC_PORT``; 0: off)."""

from __future__ import annotations

import pytest

from sigserve.local_stack import _banner
from sigserve.settings import StackSettings


def test_stack_serves_grpc_on_8001_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGSERVE_GRPC_PORT", raising=False)
    s = StackSettings()
    assert s.grpc_port == 8001
    panel, _ = _banner(s, "token")
    assert "gRPC         127.0.0.1:8001" in str(panel.renderable)

def test_stack_grpc_port_from_env_and_0_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGSERVE_GRPC_PORT", "9123")
    assert StackSettings().grpc_port == 9123
    monkeypatch.setenv("SIGSERVE_GRPC_PORT", "0")
    s = StackSettings()
    assert s.grpc_port == 0
    panel, _ = _banner(s, "token")
    assert "gRPC" not in str(panel.renderable)

def test_stack_refuses_a_port_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGSERVE_GRPC_PORT", "-1")
    with pytest.raises(ValueError, match="grpc_port"):
        StackSettings()

def test_stack_default_grpc_is_off_without_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray's Python proxy would bind the default port on every interface; one set is kept.
    monkeypatch.delenv("SIGSERVE_GRPC_PORT", raising=False)
    monkeypatch.setenv("SIGSERVE_FAST_PATH", "false")
    s = StackSettings()
    assert s.grpc_listen_port() == 0
    assert "gRPC" not in str(_banner(s, "token")[0].renderable)
    monkeypatch.setenv("SIGSERVE_GRPC_PORT", "8001")
    assert StackSettings().grpc_listen_port() == 8001
    monkeypatch.delenv("SIGSERVE_FAST_PATH")
    monkeypatch.delenv("SIGSERVE_GRPC_PORT")
    assert StackSettings().grpc_listen_port() == 8001

"""`sigserve up` serves gRPC when ``SIGSERVE_GRPC_PORT`` names a port; off by default."""

from __future__ import annotations

import pytest

from sigserve.local_stack import _banner
from sigserve.settings import StackSettings


def test_stack_serves_no_grpc_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGSERVE_GRPC_PORT", raising=False)
    s = StackSettings()
    assert s.grpc_listen_port() == 0
    assert "gRPC" not in str(_banner(s, "token")[0].renderable)


def test_stack_grpc_port_from_env_is_served_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGSERVE_GRPC_PORT", "8001")
    s = StackSettings()
    assert s.grpc_listen_port() == 8001
    assert "gRPC         127.0.0.1:8001" in str(_banner(s, "token")[0].renderable)
    monkeypatch.setenv("SIGSERVE_GRPC_PORT", "0")
    assert StackSettings().grpc_listen_port() == 0


def test_stack_refuses_a_port_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGSERVE_GRPC_PORT", "-1")
    with pytest.raises(ValueError, match="grpc_port"):
        StackSettings()

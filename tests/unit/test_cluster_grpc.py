"""`sigserve serve` starts Serve's gRPC proxy (the Open Inference Protocol) only when
``SIGSERVE_GRPC_PORT`` (or ``grpc_port``) is set and not 0."""

from __future__ import annotations

import pytest

from sigserve.cluster import _grpc_address, serve_start_options
from sigserve.stack import GRPC_SERVICER


def test_cluster_starts_grpc_when_a_port_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGSERVE_GRPC_PORT", raising=False)
    options = serve_start_options("EveryNode", "0.0.0.0", 8000, 8001)
    assert options["http_options"] == {"host": "0.0.0.0", "port": 8000}
    assert options["proxy_location"] == "EveryNode"
    assert options["grpc_options"].port == 8001
    assert options["grpc_options"].grpc_servicer_functions == [GRPC_SERVICER]
    assert _grpc_address("http://10.0.0.5:8000", options) == "10.0.0.5:8001"
    monkeypatch.setenv("SIGSERVE_GRPC_PORT", "9001")
    assert serve_start_options("HeadOnly", "0.0.0.0", 8000)["grpc_options"].port == 9001

def test_cluster_starts_no_grpc_when_0_or_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGSERVE_GRPC_PORT", raising=False)
    assert "grpc_options" not in serve_start_options("EveryNode", "0.0.0.0", 8000)
    monkeypatch.setenv("SIGSERVE_GRPC_PORT", "0")
    options = serve_start_options("EveryNode", "0.0.0.0", 8000)
    assert "grpc_options" not in options
    assert _grpc_address("http://10.0.0.5:8000", options) is None
    monkeypatch.setenv("SIGSERVE_GRPC_PORT", "9001")
    assert "grpc_options" not in serve_start_options("EveryNode", "0.0.0.0", 8000, 0)

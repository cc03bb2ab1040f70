"""The compose demo serves the Open Inference Protocol over gRPC as it serves HTTP: read from
``docker-compose.yml`` as compose reads it. ``make compose-check`` calls it for real from the
host (``deploy/compose/compose_grpc.py``) and checks from inside the containers that only Ray's
network reaches it (``compose_isolation.py``)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sigserve.cluster import serve_start_options
from sigserve.stack import GRPC_SERVICER, grpc_message_limit

COMPOSE = Path(__file__).parents[2] / "docker-compose.yml"
# "${SIGSERVE_BIND:-127.0.0.1}:${SIGSERVE_GRPC_PORT:-8001}:8001" -> bind, host port, container's.
PUBLISHED = re.compile(r"^(\$\{SIGSERVE_BIND:-127\.0\.0\.1\}):\$\{(\w+):-(\d+)\}:(\d+)$")


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def test_grpc_is_published_like_http_and_served_where_serve_starts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _services()
    published = {}
    for entry in services["ray-head"]["ports"]:
        match = PUBLISHED.match(entry)
        assert match, entry
        bind, variable, default, container = match.groups()
        published[variable] = (bind, int(default), int(container))
    http, grpc = published["SIGSERVE_SERVING_PORT"], published["SIGSERVE_GRPC_PORT"]
    # On the same host address as HTTP (the loopback unless SIGSERVE_BIND says otherwise).
    assert grpc[0] == http[0]
    assert grpc[1:] == (8001, 8001)

    # `serve` deploys with the container's port, which `sigserve serve` hands Serve as its
    # gRPC options, with the servicer that sigserve up registers.
    env = services["serve"]["environment"]
    assert int(env["SIGSERVE_GRPC_PORT"]) == grpc[2]
    monkeypatch.setenv("SIGSERVE_GRPC_PORT", env["SIGSERVE_GRPC_PORT"])
    options = serve_start_options("EveryNode", "0.0.0.0", 8000)["grpc_options"]
    assert options.port == grpc[2]
    assert list(options.grpc_servicer_functions) == [GRPC_SERVICER]
    module, _, function = GRPC_SERVICER.rpartition(".")
    assert callable(getattr(importlib.import_module(module), function))

    # Every Ray process bounds a gRPC message as sigserve up does, not at Ray's 2 GiB.
    monkeypatch.delenv("SIGSERVE_MAX_BODY_MB", raising=False)
    for name in ("ray-head", "ray-worker", "serve"):
        ray_env = services[name]["environment"]
        assert ray_env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] == str(grpc_message_limit()), name
    # The worker serves it too, unpublished, like its HTTP: on Ray's network only.
    assert "ports" not in services["ray-worker"]
    assert services["ray-head"]["networks"] == ["ray"]

    # The demo's banner names the gRPC address the host reaches.
    register = services["register"]["environment"]
    assert register["SIGSERVE_PUBLIC_GRPC_ADDRESS"] == "127.0.0.1:${SIGSERVE_GRPC_PORT:-8001}"

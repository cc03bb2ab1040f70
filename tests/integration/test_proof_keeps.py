"""One load per new version (issue 17), on the session's real stack: a version that will not be
its model's default is loaded by its proof, and kept loaded when the replica's multiplexer has a
free slot, so its first request loads nothing; with the multiplexer full, the proof's load goes
and evicts nothing, and the first request loads it.

A replica warms as many defaults as it keeps, so a replica of this session is full; the test
gets a free slot from a replica of its own, started without warming (``warm_defaults``), and
puts the session's back after (a redeploy each way, ~3 s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import (
    ControllerHandle,
    loads_of,
    register_echo,
    serve_status,
    server_call,
    wait_for,
)

LIMIT = 2  # the session's max_num_models_per_replica (sigserve.stack's default)


def _deploy(ctl: ControllerHandle, **settings: object) -> None:
    """What sigserve.stack.start_serving does, with the session's settings and ``settings``."""
    from ray import serve

    from serving.app import build_app
    from serving.settings import ServingSettings

    chosen = ServingSettings(controller_url=ctl.url, serving_token=ctl.secrets.serving_token,
                             max_num_models_per_replica=LIMIT, **settings)  # fmt: skip
    serve.run(build_app(chosen), name=chosen.app_name, route_prefix="/", blocking=False)


@pytest.fixture()
def empty_replica(serving_url: str, ctl: ControllerHandle) -> Iterator[str]:
    _deploy(ctl, warm_defaults=False)
    # serve.run returns with the new replica up and the old one gone.
    wait_for(lambda: server_call("resident") == [] and server_call("loads") == [], 30, 0.2)
    try:
        yield serving_url
    finally:
        _deploy(ctl)
        wait_for(lambda: httpx.get(f"{serving_url}/models", timeout=10).status_code == 200, 60)


def _first_200(serving_url: str, ctl: ControllerHandle, name: str, version: str) -> float:
    """Once the controller has it live: the latency of the version's first 200 (the replica
    answers 503 while its table still has it pending, which loads nothing)."""
    wait_for(lambda: ctl.state_of(name, version) == "live", 60, 0.05)

    def answered() -> float | None:
        started = time.perf_counter()
        r = serve_status(serving_url, name, version)
        took = time.perf_counter() - started
        assert r.status_code in (200, 503), r.text
        return took if r.status_code == 200 else None

    took: float = wait_for(answered, 30, 0.02)
    return took


def test_a_proven_version_is_loaded_once_when_the_replica_has_room(
    empty_replica: str, ctl: ControllerHandle
) -> None:
    url, name = empty_replica, f"keep_{time.time_ns()}"
    register_echo(name, tag="one", input_example=True)
    wait_for(lambda: serve_status(url, name).status_code == 200, 60, 0.05)
    assert len(server_call("resident")) == 1  # the default, loaded by its proof

    second = register_echo(name, tag="two", input_example=True)
    kept_s = _first_200(url, ctl, name, second)
    # Its proof's load is its only one: the first request found it loaded.
    assert len(loads_of(name, second)) == 1, loads_of(name, second)
    assert serve_status(url, name, second).json() == [{"answer": "two:hi"}]

    # Full now: the third version's proof loads it beside the two and lets it go.
    held = server_call("resident")
    assert len(held) == LIMIT
    third = register_echo(name, tag="three", input_example=True)
    wait_for(lambda: ctl.state_of(name, third) == "live", 60, 0.05)
    assert server_call("resident") == held  # nothing evicted for it
    loaded_s = _first_200(url, ctl, name, third)
    assert len(loads_of(name, third)) == 2, loads_of(name, third)
    print(f"\n[figure] first request of a new non-default version: {kept_s * 1000:.1f} ms kept "
          f"from its proof, {loaded_s * 1000:.1f} ms loaded by the request")  # fmt: skip

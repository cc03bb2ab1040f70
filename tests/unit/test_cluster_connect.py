"""``sigserve serve`` joins a cluster through a Ray Client whose server may fail to start the
process for a first client on a freshly started head (seen in the compose demo): that refusal is
tried again, any other is said at once (``sigserve.cluster._connect``; ``init`` is the seam in
place of ``ray.init``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from sigserve import cluster
from sigserve.cluster import ClusterError, _connect

# What Ray 2.60's client raised in the compose demo (ray/util/client/worker.py, _server_init).
START_FAILED = (
    "Initialization failure from server:\nTraceback (most recent call last):\n"
    '  File ".../ray/util/client/server/proxier.py", line 772, in Datapath\n'
    "    raise RuntimeError(\nRuntimeError: Starting Ray client server failed. See "
    "ray_client_server_23000.err for detailed logs.\n"
)


class Init:
    """``ray.init`` as the Ray Client answers it: the given errors, then connected."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        if self.errors:
            raise self.errors.pop(0)


@pytest.fixture(autouse=True)
def _no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "CLIENT_RETRY_PAUSE_S", 0.0)


def test_a_client_server_that_failed_to_start_is_tried_again() -> None:
    init = Init(ConnectionAbortedError(START_FAILED))
    assert _connect("ray://head:10001", time.monotonic() + 60, init=init) == 2
    assert [c["address"] for c in init.calls] == ["ray://head:10001"] * 2


def test_it_gives_up_after_its_attempts_and_says_why() -> None:
    init = Init(*[ConnectionAbortedError(START_FAILED)] * 5)
    with pytest.raises(ClusterError) as refused:
        _connect("ray://head:10001", time.monotonic() + 60, init=init)
    assert str(refused.value).startswith("no running Ray cluster at ray://head:10001: ")
    assert "Starting Ray client server failed" in str(refused.value)
    assert len(init.calls) == cluster.CLIENT_ATTEMPTS


def test_any_other_refusal_is_said_at_once() -> None:
    init = Init(ConnectionError("Could not find any running Ray instance"))
    with pytest.raises(ClusterError, match="Could not find any running Ray instance"):
        _connect("10.0.0.1:6379", time.monotonic() + 60, init=init)
    assert len(init.calls) == 1


def test_no_attempt_past_the_deadline() -> None:
    init = Init(ConnectionAbortedError(START_FAILED))
    with pytest.raises(ClusterError):
        _connect("ray://head:10001", time.monotonic() - 1, init=init)
    assert len(init.calls) == 1

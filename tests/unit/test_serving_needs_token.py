"""Serving does not start without the serving token (docs/security.md, "The routing table's
signature"): it could check no table's signature, so whoever answers for the controller or
writes Ray's key-value store would choose what it runs. Refused loudly, never served so."""

from __future__ import annotations

import asyncio

import pytest

from serving.server import Server
from serving.settings import ServingSettings
from sigserve.cluster import ClusterError, deploy


def test_sigserve_serve_refuses_at_once_without_the_serving_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SIGSERVE_SERVING_TOKEN", raising=False)
    # Nothing listens at that address: the refusal comes before any cluster is reached.
    with pytest.raises(ClusterError, match="SIGSERVE_SERVING_TOKEN is not set"):
        deploy("127.0.0.1:9", settings=ServingSettings(), timeout_s=5)


class _Unwrapped(Server):
    """The replica class as Ray builds it, less its wrapper's async ``__del__`` (which nobody
    would await here: it warns at exit)."""

    def __del__(self) -> None:
        pass


def test_a_replica_built_without_the_serving_token_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SIGSERVE_SERVING_TOKEN", raising=False)
    # Ray Serve's ingress wrapper runs the class's __init__ from an async one; called as Ray
    # calls it, without a replica around it (the refusal comes before anything needs one).
    replica = object.__new__(_Unwrapped)
    with pytest.raises(RuntimeError, match="SIGSERVE_SERVING_TOKEN is not set"):
        asyncio.run(Server.__init__(replica, ServingSettings()))  # type: ignore[func-returns-value,arg-type]

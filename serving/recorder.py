"""What the request path tells the metrics, without Ray: the seam between the two.

The HTTP API (``serving.api``) and the batcher (``serving.batching``, through
``serving.model_host``) call a ``Recorder`` on every request and every batch. In a replica it is
``serving.metrics.ReplicaMetrics`` (Ray's metrics, batched off the request path); in tests and
anywhere else, ``NoRecorder``. Both calls must cost next to nothing: they run once per request.
"""

from __future__ import annotations

from typing import Protocol


class Recorder(Protocol):
    def request(self, model: str, version: str, status: int, seconds: float) -> None:
        """One inference request answered: its model and version ("" when the routing table
        has no such model or version), HTTP status and time in the app."""
        ...

    def batch(self, model_id: str, records: int) -> None:
        """One predict call over ``records`` records of ``model_id`` (``name/version@key``)."""
        ...

    async def start(self) -> None:
        """Start whatever runs in the background (the app's start-up)."""
        ...

    async def stop(self) -> None: ...


class NoRecorder:
    def request(self, model: str, version: str, status: int, seconds: float) -> None:
        return None

    def batch(self, model_id: str, records: int) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

"""Hands the latest routing table to long-polling serving replicas.

The serving app's ingress replicas ask "anything newer than revision N?" and wait here until
there is, or until their timeout; Ray Serve's own proxies and Envoy's xDS get routes this way.
"""

from __future__ import annotations

import asyncio

from sigserve.routing_table import RoutingTable


class TableBroadcaster:
    def __init__(self) -> None:
        self._table: RoutingTable | None = None
        self._changed = asyncio.Condition()

    @property
    def current(self) -> RoutingTable | None:
        return self._table

    async def offer(self, table: RoutingTable) -> None:
        async with self._changed:
            if self._table is None or table.revision > self._table.revision:
                self._table = table
                self._changed.notify_all()

    async def newer_than(self, revision: int, timeout: float) -> RoutingTable | None:
        """The current table if its revision is above ``revision``, waiting up to ``timeout``."""

        def newer() -> bool:
            return self._table is not None and self._table.revision > revision

        async with self._changed:
            if newer():
                return self._table
            try:
                await asyncio.wait_for(self._changed.wait_for(newer), timeout)
            except TimeoutError:
                return None
            return self._table

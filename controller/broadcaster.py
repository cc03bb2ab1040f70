"""Hands the latest routing table to long-polling serving replicas.

The serving app's ingress replicas ask "anything newer than revision N?" and wait here until
there is, or until their timeout; Ray Serve's own proxies and Envoy's xDS get routes this way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from wire.routing_table import RoutingTable, supersedes

log = logging.getLogger(__name__)


class TableBroadcaster:
    def __init__(self, on_new: Callable[[RoutingTable], None] | None = None) -> None:
        self._table: RoutingTable | None = None
        self._changed = asyncio.Condition()
        # Told of each table taken (the gauges of the table held: ``controller.publisher``).
        self._on_new = on_new

    @property
    def current(self) -> RoutingTable | None:
        return self._table

    async def offer(self, table: RoutingTable) -> None:
        held = self._table
        # The revision held, built anew (the store's full rebuild every 600 s, a table loaded
        # again), is taken only with the same content: the long-poll keeps each body by the
        # revision (``controller.long_poll``), so a table taken with other content would be
        # answered with the old body. Compared off the event loop (~0.5 s at 10,000 models x 5
        # versions x 7 files, load 4-6), and before taking the lock, which polls wait on.
        rebuilt = _rebuilt(table, held)
        # Handed over in a list emptied after: the pool's work item keeps its arguments a moment
        # after the answer, which would keep the old table alive past its replacement.
        pair: list[RoutingTable | None] = [table, held]
        try:
            same = rebuilt and await asyncio.to_thread(_same_models, pair)
        finally:
            pair.clear()
        async with self._changed:
            if supersedes(table, self._table):
                self._table = table
                self._changed.notify_all()
                if self._on_new is not None:
                    self._on_new(table)
            elif same and self._table is held:
                # In the objects the store now builds on. Keeping the old ones would keep two
                # copies of every entry (~0.8-2.6 KB a version) until the next revision, hours
                # in a quiet registry. No poll waits for it; whoever keeps the table held is
                # told, so it lets the old one go too (the same content: nothing new for it).
                self._table = table
                if self._on_new is not None:
                    self._on_new(table)
            elif rebuilt and self._table is held:
                # A revision names one content; the store publishes above one it answered
                # (``controller.store_tables``, "A database that went back").
                log.warning(
                    "revision %d of epoch %s offered again with other content: the table held "
                    "is kept (the database went back?)", table.revision, table.epoch,
                    extra={"event": "table_revision_reused", "revision": table.revision,
                           "epoch": table.epoch},
                )  # fmt: skip

    def newer(self, revision: int, epoch: str | None) -> RoutingTable | None:
        """The current table if it supersedes the caller's now, without waiting."""
        return self._table if self._is_newer(revision, epoch) else None

    async def newer_than(
        self, revision: int, epoch: str | None, timeout: float
    ) -> RoutingTable | None:
        """The current table if it supersedes the caller's, waiting up to ``timeout``.

        A caller from another epoch (this controller's database was replaced since) gets the
        current table at once, whatever its revision.
        """

        def newer() -> bool:
            return self._is_newer(revision, epoch)

        async with self._changed:
            if newer():
                return self._table
            try:
                await asyncio.wait_for(self._changed.wait_for(newer), timeout)
            except TimeoutError:
                return None
            return self._table

    def _is_newer(self, revision: int, epoch: str | None) -> bool:
        if self._table is None:
            return False
        if epoch is not None and epoch != self._table.epoch:
            return True
        return self._table.revision > revision


def _rebuilt(new: RoutingTable, held: RoutingTable | None) -> bool:
    """Whether ``new`` is ``held``'s revision made of other objects (not the same entries)."""
    if held is None or new is held:
        return False
    if (new.epoch, new.revision, new.schema_version) != (
        held.epoch,
        held.revision,
        held.schema_version,
    ):
        return False
    return new.models.keys() == held.models.keys() and any(
        entry is not held.models[name] for name, entry in new.models.items()
    )


def _same_models(pair: list[RoutingTable | None]) -> bool:
    new, held = pair
    return new is not None and held is not None and new.models == held.models

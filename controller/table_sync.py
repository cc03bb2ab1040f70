"""Tables another controller published, loaded into this one's long-poll.

With several controllers on one PostgreSQL, each answers the routing-table long-poll, but a
table is published by whichever made the change: the leader for reconciles, any controller for
an admin write. Every ``SIGSERVE_FOLLOWER_POLL_S`` (0.25 s) each reads the revision row (epoch and
revision, one small query) and, when it is ahead of the table it holds, rebuilds that table from
the decisions and hands it to its broadcaster: a replica long-polling any controller has a new
table at most one poll interval (plus the rebuild) after it was published.

The rebuilt table is taken only when its content digest is the one the revision row records: a
reconcile commits its decisions before it publishes them, and a table built in between would
give one revision two contents. The publish that follows every commit brings them.

A row of the held table's epoch *below* the revision held means the database went back (restored
from a backup: docs/architecture.md, "A follower's long-poll"). Waiting for the database to
count past the revision held would leave a replica polling only this controller on the old
content meanwhile, so this controller publishes the decisions above what it holds itself.
"""

from __future__ import annotations

import asyncio
import logging

from controller.broadcaster import TableBroadcaster
from controller.store import Store
from wire.routing_table import RoutingTable

log = logging.getLogger(__name__)


class TableSync:
    def __init__(self, store: Store, broadcaster: TableBroadcaster, *, poll_s: float) -> None:
        self._store = store
        self._broadcaster = broadcaster
        self._poll_s = poll_s
        self._failing = False

    async def refresh(self) -> bool:
        """Load the table last published if it is newer than the one held; whether it was."""
        # The table held is read before the row: a publish of this process that commits and
        # is offered while the row is read then shows as the row ahead (loaded again, the same
        # content: ignored), not as a held table above the row, which reads as a restore.
        held = self._broadcaster.current
        published = await asyncio.to_thread(self._store.published)
        if published is None:
            return False
        epoch, revision = published
        if held is not None and held.epoch == epoch and held.revision >= revision:
            if revision < held.revision:
                await self._publish_above(held)
                return True
            return False
        table = await asyncio.to_thread(self._store.published_table)
        if table is None:
            return False  # decisions committed since that publish: the next one brings them
        await self._broadcaster.offer(table)  # its gauges: controller.publisher.table_gauges
        log.info("loaded revision %d, published by another controller", table.revision,
                 extra={"event": "table_loaded", "revision": table.revision})
        return True

    async def _publish_above(self, held: RoutingTable) -> None:
        """Publish the decisions above ``held``, which the database went back below.

        The store's publish goes above every revision this process answered (``held`` among
        them), building only the models that moved. It takes the revision row's lock, so
        controllers doing this at once publish one after the other: the second reads the first's
        row, above what it holds, and gets that revision and content unless the decisions moved
        between, when it takes the next. Should the store not count ``held`` as answered, the
        catch-up puts the revision above it anyway.
        """
        table = await asyncio.to_thread(self._store.publish)
        if table.epoch == held.epoch and table.revision <= held.revision:
            table = await asyncio.to_thread(self._store.catch_up, held.revision)
        await self._broadcaster.offer(table)
        # The store warned of the database going back (``table_went_back``); this says why a
        # controller that is not the leader published.
        log.info(
            "the database's revision in epoch %s went back below the %d this controller holds: "
            "published its decisions as revision %d",
            held.epoch, held.revision, table.revision,
            extra={"event": "table_published_above", "epoch": held.epoch, "held": held.revision,
                   "revision": table.revision},
        )  # fmt: skip

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
                self._failing = False
            except Exception as exc:
                # The database may be down: the long-poll goes on with the table held.
                if not self._failing:
                    log.warning("loading the published table failed (%s); trying again", exc)
                self._failing = True
            await asyncio.sleep(self._poll_s)

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
"""

from __future__ import annotations

import asyncio
import logging

from controller.broadcaster import TableBroadcaster
from controller.store import Store

log = logging.getLogger(__name__)


class TableSync:
    def __init__(self, store: Store, broadcaster: TableBroadcaster, *, poll_s: float) -> None:
        self._store = store
        self._broadcaster = broadcaster
        self._poll_s = poll_s
        self._failing = False

    async def refresh(self) -> bool:
        """Load the table last published if it is newer than the one held; whether it was."""
        published = await asyncio.to_thread(self._store.published)
        held = self._broadcaster.current
        if published is None:
            return False
        epoch, revision = published
        if held is not None and held.epoch == epoch and held.revision >= revision:
            return False
        table = await asyncio.to_thread(self._store.published_table)
        if table is None:
            return False  # decisions committed since that publish: the next one brings them
        await self._broadcaster.offer(table)  # its gauges: controller.publisher.table_gauges
        log.info("loaded revision %d, published by another controller", table.revision,
                 extra={"event": "table_loaded", "revision": table.revision})
        return True

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

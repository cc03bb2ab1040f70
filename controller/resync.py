"""What fills the worker's queue besides webhooks: the periodic resync and followers' requests.

The resync is the controller pattern's safety net: every so often every model the registry or
the database knows is enqueued, so whatever a lost webhook (or a deletion, which fires none)
left undone is done within one interval. It also prunes what is kept for a while only: the
webhook delivery ids (a day: MLflow retries a delivery for seconds) and the audit log (its
retention). With several controllers on one PostgreSQL, the leader also takes what followers
were asked to reconcile (``reconcile_requests``) into its queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from controller.exceptions import RegistryUnavailable
from controller.registry import RegistryPort
from controller.store import Store

log = logging.getLogger(__name__)
DELIVERY_MEMORY = timedelta(days=1)


class Resync:
    def __init__(
        self,
        registry: RegistryPort,
        store: Store,
        enqueue: Callable[[str, str], None],
        *,
        interval_s: float,
        audit_retention: timedelta,
        full_interval_s: float = 600.0,
    ) -> None:
        self._full_interval_s = full_interval_s
        self._registry = registry
        self._store = store
        self._enqueue = enqueue
        self._interval_s = interval_s
        self._audit_retention = audit_retention

    def passed(self, name: str) -> None:
        """The worker committed a pass over ``name`` (what it read is decided)."""

    def failed(self, name: str) -> None:
        """A pass over ``name`` failed or left something to retry: the next resync must
        enqueue it whatever the registry's listing says."""

    async def once(self) -> list[str] | None:
        """Enqueue every model the registry or the database knows; prune old records.

        The names enqueued (what priming waits for, ``Worker.prime``); None when the registry
        could not be listed.
        """
        try:
            names = await asyncio.to_thread(self._registry.model_names)
        except RegistryUnavailable as exc:
            log.warning("resync: registry unavailable (%s)", exc)
            return None
        known = await asyncio.to_thread(self._store.model_names)
        await asyncio.to_thread(self._store.prune_deliveries, DELIVERY_MEMORY)
        await asyncio.to_thread(self._store.prune_events, self._audit_retention)
        listed = sorted(set(names) | set(known))
        for name in listed:
            self._enqueue(name, "resync")
        return listed

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except Exception:
                log.exception("resync failed; trying again in %.0fs", self._interval_s)
            await asyncio.sleep(self._interval_s)

    async def take_requests(self) -> int:
        """Enqueue what followers were asked to reconcile; how many names."""
        taken = await asyncio.to_thread(self._store.take_reconcile_requests)
        for name, actor in taken:
            self._enqueue(name, actor)
        return len(taken)

    async def take_requests_loop(self, every_s: float) -> None:
        failing = False
        while True:
            try:
                await self.take_requests()
                failing = False
            except Exception as exc:
                # Temporary (the database): the requests stay in their table for the next try.
                if not failing:
                    log.warning("taking followers' reconcile requests failed (%s)", exc)
                failing = True
            await asyncio.sleep(every_s)

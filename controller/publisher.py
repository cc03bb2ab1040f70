"""Publishing the routing table: build it from the decisions, hand it to the long-poll, say so.

``Publisher.publish`` is the one way this controller publishes (the worker after reconciles,
the admin API through ``Services.publish``; on the leader both through the worker's
``controller/coalescer.py``, so one publish may carry the decisions of several passes). Around
``Store.publish`` it

- times the publish (``sigserve_publish_seconds``);
- logs ``published revision N`` with what the revision changes for serving
  (``wire.routing_table.changes``: ``name/version=state``...) and, through ``wire.logs.trail``,
  the delivery ids of the reconcile passes that asked for it: the link from a webhook to the
  revision that carried its decision;
- observes ``sigserve_registration_to_live_seconds`` for each version that this revision makes
  live for the first time, from the version's creation in the registry (its
  ``creation_timestamp``, which the reconciler passes on through ``expect``).

Why the registry's creation time and not the webhook's arrival: it is when the data scientist
registered the version, so the histogram covers what they wait for, a webhook MLflow delivered
late, or never (the resync then finds the version), included. The registry's clock is not the
controller's; a skew shows as an offset (negative values count as 0).

``table_gauges`` keeps the table's revision and the versions per state (the gauges) equal to
the table this controller answers the long-poll with, however it got it (published here,
loaded from another controller's publish, restored by ``catch_up``): the broadcaster calls it
for every new table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping

from controller.broadcaster import TableBroadcaster
from controller.metrics import STATES, Metrics
from controller.store import Store
from wire.routing_table import ModelEntry, RoutingTable, VersionState, changes, supersedes

log = logging.getLogger(__name__)
# Versions waiting to go live that are remembered (oldest forgotten first).
_EXPECTED_MEMORY = 10_000


def table_gauges(metrics: Metrics) -> Callable[[RoutingTable], None]:
    # The versions per state, counted again only for the models whose entry is not the last
    # table's: a publish keeps the entries of the models that did not move (frozen). Counting
    # all 50,000 versions took ~35 ms of the event loop at every table. The last table is the
    # one the broadcaster holds: keeping it here keeps nothing more alive.
    last: list[RoutingTable] = []
    totals: Counter[str] = Counter()

    def count(model: ModelEntry) -> Counter[str]:
        return Counter(v.state.value for v in model.versions.values())

    def update(table: RoutingTable) -> None:
        metrics.table_revision.set(table.revision)
        before = last[0].models if last else {}
        for name, model in table.models.items():
            was = before.get(name)
            if was is not model:
                totals.update(count(model))
                if was is not None:
                    totals.subtract(count(was))
        for name in before.keys() - table.models.keys():
            totals.subtract(count(before[name]))
        last[:] = [table]
        for state in STATES:
            metrics.versions.labels(state).set(totals.get(state, 0))

    return update


class Publisher:
    def __init__(
        self,
        store: Store,
        broadcaster: TableBroadcaster,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._broadcaster = broadcaster
        self._metrics = metrics
        self._clock = clock
        # (model, version) -> registry creation time (s), for versions not live yet.
        self._expected: dict[tuple[str, str], float] = {}

    def expect(self, name: str, registered_at: Mapping[str, int]) -> None:
        """Remember when ``name``'s versions were registered (ms), for those not live yet."""
        held = self._broadcaster.current
        model = held.models.get(name) if held is not None else None
        for version, millis in registered_at.items():
            entry = model.versions.get(version) if model is not None else None
            if entry is None or entry.state is VersionState.PENDING:
                self._expected.setdefault((name, version), millis / 1000)
        while len(self._expected) > _EXPECTED_MEMORY:
            del self._expected[next(iter(self._expected))]

    async def publish(self) -> RoutingTable:
        before = self._broadcaster.current
        started = time.perf_counter()
        table = await asyncio.to_thread(self._store.publish)
        await self._broadcaster.offer(table)
        self._metrics.publish_seconds.observe(time.perf_counter() - started)
        if supersedes(table, before):
            changed = changes(table, before)
            log.info(
                "published revision %d: %s",
                table.revision,
                ", ".join(changed) or "no version changed",
                extra={"event": "publish", "revision": table.revision, "epoch": table.epoch,
                       "changes": changed},
            )  # fmt: skip
            self._went_live(table)
        return table

    def _went_live(self, table: RoutingTable) -> None:
        if not self._expected:
            return
        now = self._clock()
        for key, registered in list(self._expected.items()):
            model = table.models.get(key[0])
            entry = model.versions.get(key[1]) if model is not None else None
            if entry is None or entry.state is VersionState.PENDING:
                continue
            del self._expected[key]
            if entry.state is VersionState.LIVE:
                self._metrics.registration_to_live_seconds.observe(max(0.0, now - registered))

    def reset(self) -> None:
        self._expected.clear()

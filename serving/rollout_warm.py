"""A rollout's candidate, loaded on this replica before it takes any of the rollout's traffic.

When a table brings a rollout that sends the candidate traffic (a weight or a shadow share), the
replica loads the candidate in the background, through the same multiplexer as a request would
(so it is resident beside the default and counted against ``SIGSERVE_MAX_NUM_MODELS_PER_REPLICA``
as any loaded model is), and only then lets the rollout route requests or shadows to it. Until
then the default answers them, as if the weight were 0 on this replica: no client pays a cold
load for a version it did not ask for, and the candidate's first latencies are not a download.
A candidate that does not load here is never routed to here (the loader reports a load failure
to the controller, whose quarantine ends the rollout); the next table tries again.

Keyed by what was checked (model, version, MLmodel digest), so that a candidate registered again
is loaded again. Each table prunes what it no longer names: the candidates of rollouts that ended
and versions gone from the table (a load that ends after its rollout did is not kept), so the set
stays as small as the rollouts under way. docs/architecture.md, "Rollouts".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from serving.exceptions import SigserveError
from serving.resolve import Target, resolve
from serving.rollout_routing import candidate_servable
from wire.routing_table import ModelEntry, RoutingTable

logger = logging.getLogger(__name__)

Key = tuple[str, str, str | None]


def _key(model: ModelEntry, version: str) -> Key:
    entry = model.versions.get(version)
    return (model.name, version, entry.mlmodel_digest if entry is not None else None)


class CandidateWarmer:
    def __init__(self, load: Callable[[Target], Awaitable[Any]]) -> None:
        self._load = load
        self._ready: set[Key] = set()
        self._loading: set[Key] = set()
        # The candidates the latest table's rollouts name: what ``_ready`` may hold.
        self._wanted: set[Key] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def ready(self, model: ModelEntry) -> bool:
        """Whether ``model``'s rollout candidate is loaded here (the request path: one lookup)."""
        rollout = model.rollout
        return rollout is not None and _key(model, rollout.candidate) in self._ready

    def offer(self, table: RoutingTable) -> None:
        """Load, in the background, every candidate ``table`` sends traffic to that is not
        loaded here yet (a watcher of the table source, on the replica's event loop); forget
        those it no longer names."""
        self._wanted = {
            _key(model, model.rollout.candidate)
            for model in table.models.values()
            if model.rollout is not None and model.rollout.candidate in model.versions
        }
        self._ready &= self._wanted
        for name, model in table.models.items():
            rollout = model.rollout
            if rollout is None or (rollout.weight <= 0 and rollout.shadow <= 0):
                continue
            if not candidate_servable(model, rollout):
                continue
            key = _key(model, rollout.candidate)
            if key in self._ready or key in self._loading:
                continue
            try:
                target = resolve(table, name, rollout.candidate)
            except SigserveError:
                continue
            self._loading.add(key)
            task = asyncio.get_running_loop().create_task(self._warm(key, target))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        """How many candidates are held ready here."""
        return len(self._ready)

    async def drain(self) -> None:
        """Wait for the loads under way (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _warm(self, key: Key, target: Target) -> None:
        try:
            await self._load(target)
        except Exception as exc:
            logger.warning(
                "the rollout candidate %s did not load here; the default keeps its traffic: %s",
                target.model_id,
                str(exc)[:500],
            )
        else:
            if key in self._wanted:  # its rollout may have ended while it loaded
                self._ready.add(key)
                logger.info("the rollout candidate %s is loaded; it takes its share",
                            target.model_id)  # fmt: skip
        finally:
            self._loading.discard(key)

"""What the HTTP layer needs, built once per app in its lifespan (never at import time)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from fastapi import Request
from sqlalchemy import Engine

from controller.broadcaster import TableBroadcaster
from controller.environment import ServingEnvironment
from controller.leadership import Leadership
from controller.metrics import Metrics
from controller.own_writes import OwnWrites
from controller.probe import RegistryProbe
from controller.registry import Registry
from controller.rollout_auto import NewVersions
from controller.rollout_metrics import RolloutMetrics
from controller.rollout_registry import registry_effects
from controller.rollout_stepper import RolloutStepper
from controller.rollout_store import RolloutStore
from controller.settings import ControllerSettings
from controller.store import Store
from controller.table_sync import TableSync
from controller.worker import Worker
from wire.logs import trail

log = logging.getLogger(__name__)
# Models whose last webhook time is remembered (oldest forgotten first): signed deliveries
# could otherwise name any number of models.
LAST_WEBHOOK_MEMORY = 10_000


@dataclass
class Services:
    settings: ControllerSettings
    engine: Engine
    store: Store
    registry: Registry
    broadcaster: TableBroadcaster
    metrics: Metrics
    worker: Worker
    serving_environment: ServingEnvironment
    leadership: Leadership
    # Loads tables other controllers published (PostgreSQL only; None on SQLite).
    table_sync: TableSync | None = None
    # The leader's registry writes whose webhooks are not work (the reconciler's write-back
    # remembers them, the webhook route consumes them).
    own_writes: OwnWrites = field(default_factory=OwnWrites)
    webhook_id: str | None = None
    # Versions the tables this controller takes make live: what the sigserve.rollout tag
    # rolls out (controller/rollout_auto.py; the broadcaster feeds it).
    new_versions: NewVersions = field(default_factory=NewVersions)
    # Per model, when its last verified webhook arrived (epoch seconds): for operators and the
    # latency benchmark.
    last_webhook_at: dict[str, float] = field(default_factory=dict)
    # The same for ``model_version.created`` alone: the controller's own tag and alias writes
    # come back as webhooks too, so "last webhook" is not "when the newest version arrived".
    last_version_webhook_at: dict[str, float] = field(default_factory=dict)
    # The worker and resync loops; readiness checks they are still running.
    loops: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # The registry's reachability for /readyz: one ping in flight at most.
    registry_probe: RegistryProbe = field(init=False)
    # One per routing-table poll held open (``controller.long_poll``).
    long_poll_slots: asyncio.Semaphore = field(init=False)
    long_poll_slots_max: int = field(init=False)
    # Rollouts (issue 19): their state, their metrics, and the leader's stepper.
    rollouts: RolloutStore = field(init=False)
    rollout_metrics: RolloutMetrics = field(init=False)
    rollout_stepper: RolloutStepper = field(init=False)

    def __post_init__(self) -> None:
        self.rollouts = RolloutStore(self.engine)
        self.rollout_metrics = self.metrics.rollouts
        self.rollout_stepper = RolloutStepper(
            self.rollouts,
            self.store,
            self.serving_environment,
            self.rollout_metrics,
            publish=self.publish_change,
            effects=registry_effects(self.registry, self.own_writes),
            new_versions=self.new_versions,
            # The tag steers serving: with registry controls off, only the admin API does.
            read_tags=(lambda name: self.registry.model(name).tags)
            if self.settings.registry_controls
            else None,
            interval_s=self.settings.rollout_interval_s,
        )
        self.registry_probe = RegistryProbe(lambda: self.registry.ping())
        self.long_poll_slots_max = self.settings.long_poll_max_concurrent
        self.long_poll_slots = asyncio.Semaphore(self.long_poll_slots_max)

    async def publish_change(self, name: str, why: str) -> bool:
        """Publish the table after a committed change to ``name``; whether it was published.

        The change is committed before this runs: a publish that fails must not turn it into
        a 500 (the client would retry a change that was made). The worker owes the publish and
        makes it at its next pass, which the enqueue brings about at once.
        """
        try:
            with trail(model=name, actor=why):
                published = await self.publish()
        except Exception:
            log.exception("publishing after a change to %s failed; the worker will", name)
            published = False
        try:
            await self.request_reconcile(name, why)  # also moves the registry's alias and tags
        except Exception:
            log.exception("asking the leader to reconcile %s failed; its resync will", name)
        return published

    async def publish(self) -> bool:
        """Publish the decisions; whether a table went out.

        A follower publishes its own admin writes (the revision row's lock makes that as safe
        as the leader's publish), so a 200 still means serving is being told; the leader loads
        the table within a poll. A database that never published is the leader's to prime.
        """
        if self.leadership.is_leader:
            return await self.worker.publish()
        if self.broadcaster.current is None:
            return False
        await self.worker.publisher.publish()
        return True

    async def request_reconcile(self, name: str, actor: str) -> None:
        """Reconcile ``name``: on the leader's queue, or handed to the leader through the DB."""
        if self.leadership.is_leader:
            self.worker.enqueue(name, actor)
        else:
            await asyncio.to_thread(self.store.request_reconcile, [name], actor)

    async def request_resync(self, actor: str = "admin") -> None:
        """Reconcile every model the registry or the database knows."""
        if self.leadership.is_leader:
            await self.worker.resync.once()
            return
        names = set(await asyncio.to_thread(self.registry.model_names))
        names |= set(await asyncio.to_thread(self.store.model_names))
        await asyncio.to_thread(self.store.request_reconcile, sorted(names), actor)

    def heard_from(self, name: str, at: float, event: str) -> None:
        """Remember a verified webhook's time for ``name``; bounded to the newest models."""
        memories = [self.last_webhook_at]
        if event == "model_version.created":
            memories.append(self.last_version_webhook_at)
        for memory in memories:
            memory.pop(name, None)
            memory[name] = at
            while len(memory) > LAST_WEBHOOK_MEMORY:
                del memory[next(iter(memory))]


def services(request: Request) -> Services:
    s: Services = request.app.state.services
    return s

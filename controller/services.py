"""What the HTTP layer needs, built once per app in its lifespan (never at import time)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from fastapi import Request
from sqlalchemy import Engine

from controller.broadcaster import TableBroadcaster
from controller.environment import ServingEnvironment
from controller.metrics import Metrics
from controller.probe import RegistryProbe
from controller.registry import Registry
from controller.settings import ControllerSettings
from controller.store import Store
from controller.worker import Worker

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
    webhook_id: str | None = None
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

    def __post_init__(self) -> None:
        self.registry_probe = RegistryProbe(lambda: self.registry.ping())

    async def publish_change(self, name: str, why: str) -> bool:
        """Publish the table after a committed change to ``name``; whether it was published.

        The change is committed before this runs: a publish that fails must not turn it into
        a 500 (the client would retry a change that was made). The worker owes the publish and
        makes it at its next pass, which the enqueue brings about at once.
        """
        try:
            published = await self.worker.publish()
        except Exception:
            log.exception("publishing after a change to %s failed; the worker will", name)
            published = False
        self.worker.enqueue(name, why)  # also moves the registry's alias and tags
        return published

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

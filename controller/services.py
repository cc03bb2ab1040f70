"""What the HTTP layer needs, built once per app in its lifespan (never at import time)."""

from __future__ import annotations

import asyncio
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

"""What the HTTP layer needs, built once per app in its lifespan (never at import time)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import Request
from sqlalchemy import Engine

from controller.broadcaster import TableBroadcaster
from controller.environment import ServingEnvironment
from controller.metrics import Metrics
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
    # The worker and resync loops; readiness checks they are still running.
    loops: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def heard_from(self, name: str, at: float) -> None:
        """Remember a verified webhook's time for ``name``; bounded to the newest models."""
        self.last_webhook_at.pop(name, None)
        self.last_webhook_at[name] = at
        while len(self.last_webhook_at) > LAST_WEBHOOK_MEMORY:
            del self.last_webhook_at[next(iter(self.last_webhook_at))]


def services(request: Request) -> Services:
    s: Services = request.app.state.services
    return s

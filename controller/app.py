"""The controller's FastAPI application and its lifespan.

Start-up order matters for readiness: migrate, publish what the database already knows (so
serving replicas get a table even while the registry is down), register the webhook, then start
the worker and the resync loop. Registering the webhook is retried in the background: a registry
that is down at start must not keep the controller from serving the table it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    wait_exponential,
)

from controller import admin, health, load_failures, problems, table_api, webhooks
from controller.broadcaster import TableBroadcaster
from controller.database import make_engine, migrate
from controller.exceptions import RegistryUnavailable
from controller.metrics import Metrics
from controller.reconciler import Reconciler
from controller.registry import Registry
from controller.services import Services
from controller.settings import ControllerSettings
from controller.store import Store
from controller.worker import Worker

log = logging.getLogger(__name__)


async def _register_webhook(svc: Services) -> None:
    url, secret = svc.settings.webhook_url, svc.settings.webhook_secret
    if not url or secret is None:
        return
    # A registry that is down at start must not keep the controller from serving its table:
    # this runs in the background and tries until the registry answers.
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(RegistryUnavailable),
        wait=wait_exponential(multiplier=0.5, max=30.0),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            svc.webhook_id = await asyncio.to_thread(
                svc.registry.ensure_webhook,
                svc.settings.webhook_name,
                url,
                secret.get_secret_value(),
            )
    log.info("webhook %s registered for %s", svc.webhook_id, url)


def build_services(settings: ControllerSettings) -> Services:
    engine = make_engine(
        settings.resolved_database_url(), busy_timeout_s=settings.database_busy_timeout_s
    )
    store = Store(engine)
    registry = Registry(settings.mlflow_tracking_uri)
    broadcaster = TableBroadcaster()
    metrics = Metrics.create()
    environment = settings.serving_environment()
    reconciler = Reconciler(
        store,
        registry,
        environment,
        default_policy=settings.default_policy,
        default_environment_policy=settings.default_environment_policy,
        alias=settings.default_alias,
    )
    worker = Worker(
        reconciler,
        store,
        registry,
        broadcaster,
        metrics,
        resync_interval_s=settings.resync_interval_s,
        retry_initial_s=settings.retry_initial_s,
        retry_max_s=settings.retry_max_s,
        audit_retention=timedelta(days=settings.audit_retention_days),
    )
    return Services(settings, engine, store, registry, broadcaster, metrics, worker, environment)


def create_app(settings: ControllerSettings | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = build_services(settings or ControllerSettings())  # type: ignore[call-arg]
        await asyncio.to_thread(migrate, svc.engine)
        published = await asyncio.to_thread(svc.store.has_published)
        app.state.services = svc
        svc.loops = {
            "worker": asyncio.create_task(svc.worker.run()),
            "resync": asyncio.create_task(svc.worker.resync_loop()),
        }
        if published:
            # Decisions the database already holds are served at once, registry up or not.
            await svc.worker.prime(already_published=True)
        tasks = [asyncio.create_task(_register_webhook(svc)), *svc.loops.values()]
        if not published:
            tasks.append(asyncio.create_task(svc.worker.prime(already_published=False)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            svc.engine.dispose()

    app = FastAPI(title="sigserve controller", lifespan=lifespan)
    problems.install(app)
    app.include_router(webhooks.router)
    app.include_router(admin.router)
    app.include_router(load_failures.router)
    app.include_router(health.router)
    app.include_router(table_api.router)
    return app

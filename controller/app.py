"""The controller's FastAPI application and its lifespan.

Start-up order matters for readiness: migrate, publish what the database already knows (so
serving replicas get a table even while the registry is down), register the webhook, then start
the worker and the resync loop. Registering the webhook is retried in the background: a registry
that is down at start must not keep the controller from serving the table it has.

On PostgreSQL several controllers may share the database: each loads the table last published,
takes part in the election (``controller/leadership.py``) and follows the tables others publish
(``controller/table_sync.py``); only the one that leads runs the worker, the resync and the
drain of followers' reconcile requests (``LeaderDuties``). On SQLite the controller leads from
the start, as it always did.
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

from controller import (
    admin,
    health,
    load_failures,
    long_poll,
    problems,
    proof_reports,
    rollout_admin,
    rollout_reports,
    webhooks,
)
from controller.broadcaster import TableBroadcaster
from controller.database import make_engine, migrate
from controller.decision_log import DecisionLog, ObservedStore
from controller.exceptions import RegistryUnavailable
from controller.guard import Gates
from controller.leadership import AdvisoryLock, Leadership
from controller.metrics import Metrics
from controller.own_writes import OwnWrites
from controller.publisher import table_gauges
from controller.reconciler import Reconciler
from controller.registry import Registry
from controller.rollout_auto import NewVersions
from controller.services import Services
from controller.settings import ControllerSettings
from controller.table_sync import TableSync
from controller.worker import Worker, registry_connections
from wire.routing_table import RoutingTable

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
    metrics = Metrics.create()
    # Decisions are logged and counted as they commit, whoever makes them.
    store = ObservedStore(engine, decisions=DecisionLog(metrics))
    registry = Registry(
        settings.mlflow_tracking_uri,
        artifact_sources=settings.artifact_sources,
        on_error=lambda kind: metrics.registry_errors.labels(kind).inc(),
        connections=registry_connections(settings.reconcile_concurrency),
    )
    # The table gauges follow whatever table the long-poll answers with, and the versions it
    # makes live are offered to the rollouts by tag (controller/rollout_auto.py).
    gauges, new_versions = table_gauges(metrics), NewVersions()

    def taken(table: RoutingTable) -> None:
        gauges(table)
        new_versions.observe(table)

    broadcaster = TableBroadcaster(on_new=taken)
    environment = settings.serving_environment()
    own_writes = OwnWrites()
    reconciler = Reconciler(
        store,
        registry,
        environment,
        default_policy=settings.default_policy,
        default_environment_policy=settings.default_environment_policy,
        alias=settings.default_alias,
        registry_controls=settings.registry_controls,
        own_writes=own_writes,
    )
    worker = Worker(
        reconciler,
        store,
        registry,
        broadcaster,
        metrics,
        resync_interval_s=settings.resync_interval_s,
        full_resync_interval_s=settings.full_resync_interval_s,
        concurrency=settings.reconcile_concurrency,
        retry_initial_s=settings.retry_initial_s,
        retry_max_s=settings.retry_max_s,
        audit_retention=timedelta(days=settings.audit_retention_days),
        own_writes=own_writes,
    )
    elected = engine.dialect.name == "postgresql"
    lock = (
        AdvisoryLock(engine, session_timeout_s=settings.leader_session_timeout_s)
        if elected
        else None
    )
    leadership = Leadership(lock, metrics.leader, interval_s=settings.leader_election_interval_s)
    table_sync = TableSync(store, broadcaster, poll_s=settings.follower_poll_s) if elected else None
    return Services(
        settings, engine, store, registry, broadcaster, metrics, worker, environment,
        leadership=leadership, table_sync=table_sync, own_writes=own_writes,
        new_versions=new_versions,
    )  # fmt: skip


class LeaderDuties:
    """What only the leader runs: the worker, the resync, the drain of followers' requests and
    the rollouts' stepper."""

    LOOPS = ("worker", "resync", "requests")

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._priming: asyncio.Task[None] | None = None
        # Not among the loops readiness checks: its run() outlives any failure of a tick.
        self._stepper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        svc = self._svc
        published = await asyncio.to_thread(svc.store.has_published)
        svc.loops["worker"] = asyncio.create_task(svc.worker.run())
        # A resync at once: a new leader learns what its predecessor left undone.
        svc.loops["resync"] = asyncio.create_task(svc.worker.resync.run())
        self._stepper = asyncio.create_task(svc.rollout_stepper.run())
        if svc.leadership.elected:
            svc.loops["requests"] = asyncio.create_task(
                svc.worker.resync.take_requests_loop(svc.settings.follower_poll_s)
            )
        if published:
            # Decisions the database already holds are served at once, registry up or not
            # (and a decision its predecessor committed but did not publish goes out now).
            await svc.worker.prime(already_published=True)
        else:
            self._priming = asyncio.create_task(svc.worker.prime(already_published=False))

    async def stop(self) -> None:
        """Stop leading at once; the queue is forgotten (the next leader resyncs)."""
        svc = self._svc
        tasks = [svc.loops.pop(name) for name in self.LOOPS if name in svc.loops]
        if self._priming is not None:
            tasks.append(self._priming)
            self._priming = None
        if self._stepper is not None:
            tasks.append(self._stepper)
            self._stepper = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        svc.worker.reset()


def create_app(settings: ControllerSettings | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = build_services(settings or ControllerSettings())  # type: ignore[call-arg]
        await asyncio.to_thread(migrate, svc.engine)
        app.state.services = svc
        duties = LeaderDuties(svc)
        svc.leadership.on_lead, svc.leadership.on_step_down = duties.start, duties.stop
        if svc.table_sync is None:
            await duties.start()
        else:
            # Before answering: the table the database holds, and a first round of the
            # election (the first controller up leads at once).
            await svc.table_sync.refresh()
            await svc.leadership.tick()
            svc.loops["election"] = asyncio.create_task(svc.leadership.run())
            svc.loops["table_sync"] = asyncio.create_task(svc.table_sync.run())
        webhook = asyncio.create_task(_register_webhook(svc))
        try:
            yield
        finally:
            # The election first: no takeover may start while the leader's duties stop.
            election = [svc.loops.pop(n) for n in ("election", "table_sync") if n in svc.loops]
            for task in [*election, webhook]:
                task.cancel()
            await asyncio.gather(*election, webhook, return_exceptions=True)
            await duties.stop()
            await svc.leadership.close()  # a follower takes over within its interval
            svc.engine.dispose()

    app = FastAPI(title="sigserve controller", lifespan=lifespan)
    problems.install(app)
    # Credentials and body bounds before any body is read (controller/guard.py).
    # The first gate covering a path is checked: rollout reports' own bound before /serving's.
    app.add_middleware(Gates, gates=[admin.GATE, rollout_reports.GATE, load_failures.GATE])
    app.include_router(webhooks.router)
    app.include_router(admin.router)
    app.include_router(rollout_admin.router)
    app.include_router(rollout_reports.router)
    app.include_router(load_failures.router)
    app.include_router(proof_reports.router)
    app.include_router(health.router)
    app.include_router(long_poll.router)
    return app

"""The work queue: de-duplicated names, one worker, retries with backoff.

Webhooks and the resync loop only enqueue a registered model's name. A name already waiting is
not added twice; a name that arrives while it is being reconciled is reconciled again after, so
no event is lost. Temporary failures come back after a capped exponential backoff; the resync
(``controller/resync.py``) is the safety net for everything else, and publishing is the
``controller/publisher.py``'s.

With several controllers on one PostgreSQL only the leader runs the worker
(``controller/leadership.py``); what followers are asked to reconcile reaches it through the
``reconcile_requests`` table, which the leader takes (``Resync.take_requests_loop``). A controller
that steps down forgets its queue (``reset``): the next leader starts with a full resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from datetime import timedelta

from sqlalchemy.exc import OperationalError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    wait_exponential,
)

from controller import faults
from controller.broadcaster import TableBroadcaster
from controller.exceptions import RegistryRefused, RegistryUnavailable
from controller.metrics import Metrics
from controller.publisher import Publisher
from controller.reconciler import Reconciler
from controller.registry import RegistryPort
from controller.resync import Resync
from controller.store import Store
from wire.logs import trail

log = logging.getLogger(__name__)
WEBHOOK_ACTOR = "webhook:"
# Webhook deliveries remembered per waiting name (for its log lines), the latest kept.
_DELIVERIES_PER_NAME = 20


class Worker:
    def __init__(
        self,
        reconciler: Reconciler,
        store: Store,
        registry: RegistryPort,
        broadcaster: TableBroadcaster,
        metrics: Metrics,
        *,
        resync_interval_s: float,
        retry_initial_s: float,
        retry_max_s: float,
        audit_retention: timedelta = timedelta(days=90),
    ) -> None:
        self._reconciler = reconciler
        self._store = store
        self._broadcaster = broadcaster
        self._metrics = metrics
        self.publisher = Publisher(store, broadcaster, metrics)
        # What fills the queue besides webhooks: the periodic resync, followers' requests.
        self.resync = Resync(
            registry,
            store,
            self.enqueue,
            interval_s=resync_interval_s,
            audit_retention=audit_retention,
        )
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._waiting: set[str] = set()
        # Who asked for each waiting name (the latest ask): the audit log's actor.
        self._actors: dict[str, str] = {}
        # The webhook deliveries that asked for each waiting name: its pass's log lines name
        # them all (``wire.logs.trail``), so any one delivery id leads to the decision.
        self._deliveries: dict[str, list[str]] = {}
        self._attempts: Counter[str] = Counter()
        self._retries: set[asyncio.TimerHandle] = set()
        # Set when a publish failed after decisions were written: the next pass must publish
        # even if it changes nothing, or the table would lag the database until another change.
        self._publish_owed = False
        # False until the table may be shown to serving: at once for a database that has
        # published before, after the first full pass over the registry for a fresh one.
        self._primed = False

    @property
    def primed(self) -> bool:
        return self._primed

    def enqueue(self, name: str, actor: str = "resync", deliveries: list[str] | None = None
                ) -> None:
        self._actors[name] = actor
        asked = self._deliveries.setdefault(name, [])
        asked += deliveries or []
        if actor.startswith(WEBHOOK_ACTOR):
            asked.append(actor.removeprefix(WEBHOOK_ACTOR))
        del asked[:-_DELIVERIES_PER_NAME]
        if name not in self._waiting:
            self._waiting.add(name)
            self._queue.put_nowait(name)

    async def publish(self) -> bool:
        """Publish the decisions; False while not primed (prime() publishes them then)."""
        if not self._primed:
            return False  # a fresh database's half-built table must not reach serving
        self._publish_owed = True
        await self.publisher.publish()
        self._publish_owed = False
        return True

    async def run(self) -> None:
        while True:
            name = await self._queue.get()
            self._waiting.discard(name)
            actor = self._actors.pop(name, "resync")
            deliveries = self._deliveries.pop(name, [])
            try:
                with trail(model=name, actor=actor, delivery_ids=deliveries):
                    await self._process(name, actor, deliveries)
            except Exception:
                # Publishing failed (say, the database was locked for too long): the worker
                # must go on; the name comes back with the backoff and the resync.
                self._metrics.reconciles.labels("error").inc()
                log.exception("publishing after reconciling %s failed", name)
                self._retry_later(name, "publishing failed", deliveries)
            finally:
                self._queue.task_done()

    async def _process(self, name: str, actor: str, deliveries: list[str]) -> None:
        started = time.perf_counter()
        try:
            outcome = await asyncio.to_thread(self._reconciler.reconcile, name, actor)
        except RegistryUnavailable as exc:
            self._metrics.reconciles.labels("temporary_error").inc()
            self._retry_later(name, str(exc), deliveries)
            return
        except OperationalError as exc:
            # The database is locked by another writer or unreachable: temporary, like a
            # registry outage (the transaction was rolled back, nothing of it is written).
            self._metrics.reconciles.labels("temporary_error").inc()
            self._retry_later(name, f"database unavailable: {exc.orig}", deliveries)
            return
        except RegistryRefused as exc:
            # Retrying soon cannot help; the resync comes back to it.
            self._metrics.reconciles.labels("permanent_error").inc()
            log.warning("%s: the registry refused (%s); next look at the resync", name, exc)
            return
        except Exception:
            # A bug must not stop the worker; the resync loop brings the name back.
            self._metrics.reconciles.labels("error").inc()
            log.exception("reconciling %s failed", name)
            return
        finally:
            self._metrics.reconcile_seconds.observe(time.perf_counter() - started)
        self._metrics.reconciles.labels("ok").inc()
        # A pass that changes nothing (most resync passes) is not worth a line at INFO.
        log.log(logging.INFO if outcome.changed else logging.DEBUG, "reconciled %s: %s", name,
                "changed" if outcome.changed else "no change",
                extra={"event": "reconcile", "changed": outcome.changed})
        self.publisher.expect(name, outcome.registered_at)
        if outcome.changed or self._publish_owed:
            # Inert unless a fault test sets SIGSERVE_FAULT_KILL_AT (controller.faults).
            faults.kill_at("committed", name)
            await self.publish()
        if outcome.write_back is not None:
            await asyncio.to_thread(outcome.write_back)
        if outcome.retry_reason:
            self._retry_later(name, outcome.retry_reason, deliveries)
        else:
            self._attempts.pop(name, None)

    def _retry_later(self, name: str, why: str, deliveries: list[str] | None = None) -> None:
        # A rate-limited requeue per name (client-go's per-item exponential failure limiter),
        # not a retry of a call: the name goes back on the queue, where a webhook or a resync
        # may bring it sooner, and the worker serves other names meanwhile.
        self._attempts[name] += 1
        delay = min(self._retry_max_s, self._retry_initial_s * 2 ** (self._attempts[name] - 1))
        log.warning("%s: temporary failure (%s); retrying in %.1fs", name, why, delay)

        def retry() -> None:
            self._retries.discard(handle)
            # The deliveries that asked go on with the retry: their trail leads to its decision.
            self.enqueue(name, "retry", deliveries)

        handle = asyncio.get_running_loop().call_later(delay, retry)
        self._retries.add(handle)

    def reset(self) -> None:
        """Forget the queue, the retries and priming: this controller stopped leading."""
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()
        self._queue = asyncio.Queue()
        self._waiting.clear()
        self._actors.clear()
        self._deliveries.clear()
        self.publisher.reset()
        self._attempts.clear()
        self._publish_owed = False
        self._primed = False

    async def prime(self, *, already_published: bool, settle_s: float = 120.0) -> None:
        """Let the table reach serving: at once, or after a first full pass over the registry.

        A database that published before holds decisions: serve them now (static stability).
        A fresh one (a new epoch, which replicas obey at once) would turn every model into 404
        until reconciled, so it waits until the registry answered a resync and the queue that
        resync filled was worked off (bounded by ``settle_s``).
        """
        if not already_published:
            # Refused, unlisted, or the database failed: priming must outlive it, or nothing
            # would ever be published; so it retries, capped, for as long as it takes.
            await AsyncRetrying(
                retry=retry_if_result(lambda listed: not listed) | retry_if_exception_type(),
                wait=wait_exponential(multiplier=self._retry_initial_s, max=self._retry_max_s),
                before_sleep=_log_priming_failure,
            )(self.resync.once)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), settle_s)
        self._primed = True
        await self.publish()

def _log_priming_failure(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    if exc is not None:
        log.warning(
            "priming: the first resync failed (%s: %s); trying again", type(exc).__name__, exc
        )
    else:
        log.warning("priming: the registry could not be listed yet; trying again")

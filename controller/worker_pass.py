"""How a worker's pass ends (``controller/worker.py``): run the reconcile in the passes'
threads, then by its outcome publish, hand the model to the write-back lane, tell the resync,
or requeue it after a capped backoff per name (temporary failures, a generation conflict at
once). The guarantees: docs/architecture.md, "The worker"."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from sqlalchemy.exc import OperationalError

from controller import faults
from controller.coalescer import PublishCoalescer
from controller.exceptions import (
    GenerationConflict,
    RegistryRefused,
    RegistryUnavailable,
    SteppedDown,
)
from controller.metrics import Metrics
from controller.priming import Priming
from controller.publisher import Publisher
from controller.reconciler import Reconciler
from controller.resync import Resync
from controller.worker_parts import in_thread as _in_thread
from controller.write_back_lane import WriteBackLane

log = logging.getLogger("controller.worker")
RESYNC_ACTOR = "resync"


class PassEnds:
    """The part of ``Worker`` that runs one pass and acts on how it ended."""

    _reconciler: Reconciler
    _metrics: Metrics
    _term: int
    _attempts: Counter[str]
    _retries: set[asyncio.TimerHandle]
    _retry_initial_s: float
    _retry_max_s: float
    _priming: Priming | None
    _publishes: PublishCoalescer
    publisher: Publisher
    resync: Resync
    write_backs: WriteBackLane
    enqueue: Callable[..., None]
    publish: Callable[..., Awaitable[bool]]

    async def _process(
        self,
        name: str,
        actor: str,
        deliveries: list[str],
        pool: Executor,
        free: Callable[[], None],
    ) -> None:
        started = time.perf_counter()
        term = self._term

        def fence() -> None:
            # Runs in the pass's write transaction, after its row lock: past here a step-down
            # comes too late for this pass, and a new leader's fence_in_flight waits for it.
            if self._term != term:
                raise SteppedDown(f"stopped leading while reconciling {name}")

        try:
            outcome = await _in_thread(pool, self._reconciler.reconcile, name, actor, fence=fence)
        except (RegistryUnavailable, GenerationConflict) as exc:
            self._metrics.reconciles.labels("temporary_error").inc()
            # A conflict: the model was written since this pass read it; reading again now
            # finds what was written (a conflict that repeats backs off like the rest).
            self._retry_later(
                name, str(exc), deliveries, at_once=isinstance(exc, GenerationConflict)
            )
            return
        except OperationalError as exc:
            # The database is locked by another writer or unreachable: temporary, like a
            # registry outage (the transaction was rolled back, nothing of it is written).
            self._metrics.reconciles.labels("temporary_error").inc()
            self._retry_later(name, f"database unavailable: {exc.orig}", deliveries)
            return
        except SteppedDown:
            log.info(
                "%s: this controller stopped leading during the pass; nothing of it was "
                "written (the next leader reconciles it)",
                name,
            )
            self.resync.failed(name)
            return
        except RegistryRefused as exc:
            # Retrying soon cannot help; the resync comes back to it.
            self._metrics.reconciles.labels("permanent_error").inc()
            log.warning("%s: the registry refused (%s); next look at the resync", name, exc)
            self._reconciled(name)
            self.resync.failed(name)
            return
        except Exception:
            # A bug must not stop the worker; the resync loop brings the name back.
            self._metrics.reconciles.labels("error").inc()
            log.exception("reconciling %s failed", name)
            self._reconciled(name)
            self.resync.failed(name)
            return
        finally:
            self._metrics.reconcile_seconds.observe(time.perf_counter() - started)
        self._metrics.reconciles.labels("ok").inc()
        self._reconciled(name)
        # A pass that changes nothing (most resync passes) is not worth a line at INFO, unless
        # a webhook asked for it: then its delivery id's trail ends here (an earlier pass, a
        # resync say, had already decided what the delivery announced).
        level = logging.INFO if outcome.changed or deliveries else logging.DEBUG
        log.log(level, "reconciled %s: %s", name,
                "changed" if outcome.changed else "no change",
                extra={"event": "reconcile", "changed": outcome.changed})
        self.publisher.expect(name, outcome.registered_at)
        if outcome.changed or self._publishes.owed:
            # Inert unless a fault test sets SIGSERVE_FAULT_KILL_AT (controller.faults).
            faults.kill_at("committed", name)
            # Serving has the table before the registry is told (the write-back below). The
            # model stays this pass's (no other pass of it starts) but its slot is free.
            free()
            await self.publish(deliveries)
        if (
            outcome.write_back is not None
            and term == self._term
            and (outcome.changed or actor != RESYNC_ACTOR or outcome.registry_behind)
        ):
            # Its own lane, after the passes: the registry's writes never hold a decision.
            # A resync's pass that changed nothing and found the registry as decided leaves it
            # to the marks (``Resync.once``).
            self.write_backs.add(name, changed=outcome.changed)
        if outcome.retry_reason:
            self._retry_later(name, outcome.retry_reason, deliveries)
        elif term != self._term:
            self.resync.failed(name)  # committed, but stepped down before the write-back
        else:
            self._attempts.pop(name, None)
            self.resync.passed(name)

    def _reconciled(self, name: str) -> None:
        if self._priming is not None:
            self._priming.reconciled(name)

    def _retry_later(
        self, name: str, why: str, deliveries: list[str] | None = None, *, at_once: bool = False
    ) -> None:
        # A rate-limited requeue per name (client-go's per-item exponential failure limiter),
        # not a retry of a call: the name goes back on the queue, where a webhook or a resync
        # may bring it sooner, and the worker serves other names meanwhile.
        self.resync.failed(name)
        self._attempts[name] += 1
        delay = min(self._retry_max_s, self._retry_initial_s * 2 ** (self._attempts[name] - 1))
        if at_once and self._attempts[name] == 1:
            delay = 0.0
        log.warning("%s: temporary failure (%s); retrying in %.1fs", name, why, delay)
        if self._priming is not None:
            self._priming.failed(name)

        def retry() -> None:
            self._retries.discard(handle)
            # The deliveries that asked go on with the retry: their trail leads to its decision.
            self.enqueue(name, "retry", deliveries)

        handle = asyncio.get_running_loop().call_later(delay, retry)
        self._retries.add(handle)

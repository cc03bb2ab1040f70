"""The worker: passes over model names from a two-lane queue, several models at once.

Webhooks, retries, admin commands and followers' requests enqueue a registered model's name in
the events lane, the resync in the resync lane (``controller/work_queue.py``: de-duplicated,
events first, one pass per name at a time, a name asked for during its pass reconciled again
after). Up to ``concurrency`` passes read and decide at once, in threads of the worker's own
pool, so a slow registry read holds one model, not the queue, and never the threads the HTTP
layer uses; a pass waiting for its publish leaves its slot to the next model. While the resync
lists the registry, no pass of the resync lane starts (``_after_listing``).
Temporary failures come back after a capped exponential backoff per name; the resync
(``controller/resync.py``) is the safety net for everything else and is told how each pass ended
(``Resync.passed``/``failed``). A pass that changed something waits for a publish that began
after its commit (``controller/coalescer.py``: one table for all the passes that finish
together), then hands its model to the write-back lane (``controller/write_back_lane.py``) and
ends: the registry's writes never hold a pass. The guarantees: docs/architecture.md, "The worker".

How a pass ends (publish, write-back, retry): ``controller/worker_pass.py``.

With several controllers on one PostgreSQL only the leader runs the worker
(``controller/leadership.py``); what followers are asked to reconcile reaches it through the
``reconcile_requests`` table, which the leader takes (``Resync.take_requests_loop``). A controller
that steps down forgets its queue (``reset``): the next leader starts with a full resync. Passes
still in flight when it steps down run on in their threads but cannot commit: each write checks,
in its transaction, that the worker did not step down since the pass began (``SteppedDown``),
and a new leader's worker first makes every earlier read stale (``Store.fence_in_flight``),
which also stops a leader that was frozen and does not know yet. A pass whose model was written
since it read it (``GenerationConflict``) is requeued at once and reads again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import timedelta
from typing import TypeVar, cast

from tenacity import AsyncRetrying, before_sleep_log, wait_exponential

from controller.broadcaster import TableBroadcaster
from controller.coalescer import PublishCoalescer
from controller.metrics import WRITE_BACK_STATES, Metrics
from controller.own_writes import OwnWrites
from controller.priming import Priming
from controller.publisher import Publisher
from controller.reconciler import Reconciler
from controller.registry import Registry, RegistryPort
from controller.registry_shared import BATCH as SHARED_BATCH
from controller.registry_shared import SharedReads
from controller.resync import Resync
from controller.store import Store
from controller.work_queue import LANES, Lane, WorkQueue
from controller.worker_parts import Ask as _Ask
from controller.worker_parts import list_until_listed
from controller.worker_pass import RESYNC_ACTOR, PassEnds
from controller.write_back_lane import WriteBackLane
from controller.write_back_marks import KeptCount
from wire.logs import trail

T = TypeVar("T")
log = logging.getLogger(__name__)
WEBHOOK_ACTOR = "webhook:"
# Webhook deliveries remembered per waiting name (for its log lines), the latest kept.
_DELIVERIES_PER_NAME = 20
# Models written back at once. Each job's writes are one after the other (the alias after the
# tags); measured while catching up with 1,000 models x 5 versions on one MLflow worker:
# docs/benchmarks.md, "A large registry".
WRITE_BACK_CONCURRENCY = 4
# MLflow connections past the worker's: the readiness probe's ping, the rollout stepper's tag
# reads and the admin API's calls (threads of the default pool, 6 on 2 cores).
OTHER_REGISTRY_CALLS = 8


def registry_connections(concurrency: int) -> int:
    """The MLflow HTTP connections the controller may hold at once with ``concurrency`` passes:
    the pool size it gives MLflow's client (``Registry``'s ``connections``)."""
    return concurrency + WRITE_BACK_CONCURRENCY + OTHER_REGISTRY_CALLS


class Worker(PassEnds):
    def __init__(
        self,
        reconciler: Reconciler,
        store: Store,
        registry: RegistryPort,
        broadcaster: TableBroadcaster,
        metrics: Metrics,
        *,
        resync_interval_s: float,
        full_resync_interval_s: float = 600.0,
        concurrency: int = 1,
        retry_initial_s: float,
        retry_max_s: float,
        audit_retention: timedelta = timedelta(days=90),
        own_writes: OwnWrites | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reconciler = reconciler
        self._store = store
        self._broadcaster = broadcaster
        self._metrics = metrics
        self.publisher = Publisher(store, broadcaster, metrics)
        # At most one publish at a time, each serving every pass that asked before it began.
        self._publishes = PublishCoalescer(self.publisher.publish)
        # The verdicts' way to the registry, off the passes' path (its own threads, after them).
        self.write_backs = WriteBackLane(
            self._write_back,
            busy=lambda name: name in self._queue or name in self._running,
            backlog=self._decisions_waiting,
            concurrency=WRITE_BACK_CONCURRENCY,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
        )
        # What fills the queue besides webhooks: the periodic resync, followers' requests.
        self.resync = Resync(
            registry,
            store,
            self.enqueue,
            interval_s=resync_interval_s,
            full_interval_s=full_resync_interval_s,
            audit_retention=audit_retention,
            write_back=lambda name: self.write_backs.behind(name),
            on_full=self.write_backs.retry_refused,
            own_writes=own_writes.take_made if own_writes is not None else None,
        )
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self._concurrency = concurrency
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._queue = WorkQueue()
        # The names whose pass runs now (the write-back lane leaves them to it).
        self._running: set[str] = set()
        # Who asked for each waiting name, and the webhook deliveries that did: its pass's
        # audit events and log lines name them (``wire.logs.trail``), so any one delivery id
        # leads to the decision.
        self._asks: dict[str, _Ask] = {}
        self._attempts: Counter[str] = Counter()
        self._retries: set[asyncio.TimerHandle] = set()
        # Set by every ask of the events lane: one waits for no listing (``_after_listing``).
        self._event_asked = asyncio.Event()
        # False until the table may be shown to serving: at once for a database that has
        # published before, once every model the registry listed was reconciled for a fresh one.
        self._primed = False
        self._priming: Priming | None = None
        self._clock = clock
        # One more at every step-down: a pass begun under an older term cannot commit.
        self._term = 0
        # Read at each scrape, from whichever queue the worker has then.
        for lane in LANES:
            metrics.reconcile_queue_depth.labels(lane).set_function(
                functools.partial(self._queue_depth, lane)
            )
        metrics.reconcile_in_flight.set_function(lambda: self._queue.in_flight)
        metrics.write_back_backlog.labels("behind").set_function(
            KeptCount(store.count_behind_write_back)
        )
        for i, state in enumerate(WRITE_BACK_STATES[1:]):
            metrics.write_back_backlog.labels(state).set_function(
                functools.partial(lambda i: self.write_backs.backlog()[i], i)
            )
        # A pass's reads of its model and its versions also read those waiting behind it, for
        # their passes to take while fresh (controller/registry_shared.py).
        self._shared: SharedReads | None = None
        if isinstance(registry, Registry):
            registry.on_read = lambda read: metrics.registry_reads.labels(read).inc()
            registry.shared = self._shared = SharedReads(
                lambda: self._queue.waiting(SHARED_BATCH)
            )

    @property
    def primed(self) -> bool:
        return self._primed

    def _decisions_waiting(self) -> bool:
        """What the write-back lane gives way to (``WriteBackLane``'s ``max_defer_s``): a
        webhook's, an admin's or a retry's name waiting, or priming. Not the resync's lane: a
        full resync of 10,000 models is minutes of passes, during which the lane wrote one
        model per slot per 5 s (issue 20: ~80 min to catch up with 10,000 models decided)."""
        return not self._primed or self._queue.depth("events") > 0

    def _queue_depth(self, lane: Lane) -> int:
        return self._queue.depth(lane)

    def enqueue(self, name: str, actor: str = RESYNC_ACTOR, deliveries: list[str] | None = None
                ) -> None:
        ask = self._asks.get(name)
        if ask is None:
            ask = self._asks[name] = _Ask(actor)
        elif actor != RESYNC_ACTOR or ask.actor == RESYNC_ACTOR:
            # The latest ask names the pass, but a resync's never replaces an event's: the
            # name is in the events lane for it.
            ask.actor = actor
        asked = ask.deliveries
        asked += deliveries or []
        if actor.startswith(WEBHOOK_ACTOR):
            asked.append(actor.removeprefix(WEBHOOK_ACTOR))
        del asked[:-_DELIVERIES_PER_NAME]
        if self._shared is not None:
            self._shared.asked(name)  # before it can be read for: a read from now on is fresh
        self._queue.add(name, "resync" if actor == RESYNC_ACTOR else "events")
        if actor != RESYNC_ACTOR:
            self._event_asked.set()

    async def publish(self, deliveries: list[str] | None = None) -> bool:
        """Publish the decisions committed before this call; False while not primed (prime()
        publishes them then). Returns once a publish that began after the call completed."""
        if not self._primed:
            return False  # a fresh database's half-built table must not reach serving
        await self._publishes.publish(deliveries)
        return True

    async def run(self) -> None:
        await self._fence_predecessors()
        # The passes' threads: a pool of the worker's own, so passes blocked on the registry
        # never hold the default pool the HTTP layer's ``to_thread`` calls need, and no more
        # than ``concurrency`` registry or database calls of passes run at once.
        pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="sigserve-reconcile")
        # A slot is held from a pass's start until it asks for its publish: a pass waiting for
        # the publish (which reads every decision: seconds at registry scale) leaves its slot
        # to the next model, and that publish's successor carries them all.
        slots = asyncio.Semaphore(self._concurrency)
        passes: set[asyncio.Task[None]] = set()
        write_backs = asyncio.create_task(self.write_backs.run())

        def slot() -> Callable[[], None]:
            held = True

            def free() -> None:
                nonlocal held
                if held:
                    held = False
                    slots.release()

            return free

        def ended(free: Callable[[], None], task: asyncio.Task[None]) -> None:
            passes.discard(task)
            free()

        try:
            while True:
                await slots.acquire()
                free = slot()
                queue = self._queue
                try:
                    await self._after_listing(queue)
                    name = await queue.get()
                except BaseException:
                    free()
                    raise
                ask = self._asks.pop(name, None) or _Ask(RESYNC_ACTOR)
                task = asyncio.create_task(self._pass(queue, name, ask, pool, free))
                passes.add(task)
                task.add_done_callback(functools.partial(ended, free))
        finally:
            # Cancelled (stepped down, shut down): the passes' threads run on, but cannot
            # commit once ``reset`` moved the term on.
            for task in passes:
                task.cancel()
            write_backs.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    async def _after_listing(self, queue: WorkQueue) -> None:
        """Return when the next pass may start: at once for a name of the events lane, after
        the resync's listing for one of the resync lane. MLflow (one worker by default) answers
        the listing and the full pass's reads of many models alike; beside a full pass of
        10,000 models a resync took 11.45 s (issue 20's target: 10 s). The passes already
        running go on."""
        listed = self.resync.not_listing
        while not listed.is_set() and not queue.depth("events"):
            self._event_asked.clear()
            waits = [asyncio.ensure_future(listed.wait()),
                     asyncio.ensure_future(self._event_asked.wait())]  # fmt: skip
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    async def _pass(
        self, queue: WorkQueue, name: str, ask: _Ask, pool: Executor, free: Callable[[], None]
    ) -> None:
        self._running.add(name)  # from here the lane starts no write-back of it (``busy``)
        try:
            await self.write_backs.finished(name)
            with trail(model=name, actor=ask.actor, delivery_ids=ask.deliveries):
                await self._process(name, ask.actor, ask.deliveries, pool, free)
        except Exception:
            # Publishing failed (say, the database was locked for too long): the worker
            # must go on; the name comes back with the backoff and the resync.
            self._metrics.reconciles.labels("error").inc()
            log.exception("publishing after reconciling %s failed", name)
            self._retry_later(name, "publishing failed", ask.deliveries)
        finally:
            self._running.discard(name)
            queue.done(name)
            # A name asked for by an event during its pass goes to the events lane only now;
            # told, so a loop waiting for the resync's listing starts it at once.
            if queue.depth("events"):
                self._event_asked.set()

    async def _fence_predecessors(self) -> None:
        """Before the first pass: what a controller that led before still has in flight must
        not commit (``Store.fence_in_flight``). Until the database answers, nothing is done."""
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=self._retry_initial_s, max=self._retry_max_s),
            before_sleep=before_sleep_log(log, logging.WARNING),
        ):
            with attempt:
                await asyncio.to_thread(self._store.fence_in_flight)

    def _write_back(self, name: str) -> str | None:
        """The lane's job, in its thread: fenced by the term it began in (``reset``)."""
        job = getattr(self._reconciler, "write_back", None)
        if job is None:
            return None
        term = self._term
        # Read from the lane's thread: membership tests of the worker's own set and queue.
        return cast(str | None, job(name, leading=lambda: self._term == term,
                                    wanted=lambda: name in self._running or name in self._queue))

    def reset(self) -> None:
        """Forget the queue, the retries and priming: this controller stopped leading."""
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()
        self._queue = WorkQueue()  # passes in flight end on the old one
        self.write_backs.reset()
        self._asks.clear()
        self.publisher.reset()
        self._attempts.clear()
        self._publishes.owed = False
        self._primed = False
        self._priming = None
        self._term += 1  # what is in flight cannot commit

    async def prime(self, *, already_published: bool) -> None:
        """Let the table reach serving: at once, or once every listed model was reconciled.

        A database that published before holds decisions: serve them now (static stability).
        A fresh one (a new epoch, which replicas obey at once) would turn every model it lacks
        into 404, so its first table waits until the registry answered a resync and each model
        that resync listed was reconciled once (``controller/priming.py``).
        """
        if not already_published:
            self._priming = priming = Priming(self._clock)
            # Refused, unlisted, or the database failed: priming must outlive it, or nothing
            # would ever be published; so it retries, capped, for as long as it takes.
            listed = await list_until_listed(
                self.resync.once, self._retry_initial_s, self._retry_max_s
            )
            priming.listed(listed)
            took = await priming.wait()
            log.info(
                "primed: the %d listed models reconciled in %.1f s; the new epoch's first "
                "table goes out",
                len(listed),
                took,
                extra={"event": "primed", "models": len(listed), "took_s": round(took, 1)},
            )
            self._priming = None
        self._primed = True
        await self.publish()

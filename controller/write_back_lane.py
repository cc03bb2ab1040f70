"""The write-back lane: verdict tags and the alias reach the registry after, and apart from, the
decision.

A pass commits its decision and publishes it; writing the verdict back to MLflow (three tags per
version decided, the alias) is not part of it. Measured in the storm, those writes took 62% of a
pass, MLflow's SQLite write lock slowing every read behind them (docs/benchmarks.md). So the
worker hands the model's name to this lane, and the pass ends. The lane

- keeps one waiting entry per model (``add`` again before it ran changes nothing): its job
  (``Reconciler.write_back``) reads the model's latest decision from the store and the
  registry's tags and alias when it runs, so the latest state wins and a version decided twice
  before its write-back ran is written once;
- runs after the decisions: a job waits while decisions wait (``backlog``: the worker's
  events lane, a webhook's or an admin's name, and priming; not a resync's names, whose
  passes decide nothing new most of the time), for at most ``max_defer_s`` before it takes its
  turn anyway, and always while its own model is queued or in a pass (that pass hands it back
  when it ends); on threads of its own, so it never holds a pass's;
- retries a job that failed for now (the registry was down, the database locked) after a
  capped exponential backoff, by name; a refusal that is permanent (``RegistryRefused``: 401,
  403, 400, a write the same request would meet again) is recorded on the model
  (``registry_warning``), logged once, and not tried again until the model is decided anew
  (``add(changed=True)``) or the next full resync (``retry_refused``): retried, it would fail
  forever at the backoff's pace;
- is derived from the store: a model whose decision was written back is marked with the
  generation written (``controller/write_back_marks.py``), and every resync hands the lane
  whatever is behind (``Resync.once``), so a restart, a step-down or a lost job leaves nothing
  unwritten. Everything is safe to repeat: only tags that differ are written.

The writes are remembered as the controller's own before they are made
(``controller/own_writes.py``), so their webhooks reconcile nothing, as before.
The guarantees: docs/architecture.md, "The worker" and "Where data scientists look: the MLflow
registry".
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.exc import OperationalError

from controller.exceptions import (
    GaveWay,
    GenerationConflict,
    RegistryError,
    RegistryRefused,
    SteppedDown,
)
from controller.registry import RegistryWriter

log = logging.getLogger(__name__)

# A job's answer: None once written (or nothing to write), else why to try again later.
Job = Callable[[str], "str | None"]


class WriteBackLane:
    def __init__(
        self,
        job: Job,
        *,
        busy: Callable[[str], bool],
        backlog: Callable[[], bool],
        concurrency: int = 2,
        max_defer_s: float = 5.0,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        poll_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._job = job
        # Whether the worker has ``name`` queued or in a pass, and whether any name waits.
        self._busy = busy
        self._backlog = backlog
        self._concurrency = concurrency
        self._max_defer_s = max_defer_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._poll_s = poll_s
        self._clock = clock
        # Waiting names, oldest first, each once; and the ones whose job runs now (asked for
        # again meanwhile, a name runs once more after).
        self._waiting: dict[str, None] = {}
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._ready = asyncio.Event()
        self._job_ended = asyncio.Condition()
        self._attempts: Counter[str] = Counter()
        self._retries: dict[str, asyncio.TimerHandle] = {}
        # Refused for good (why): left alone until decided anew or the next full resync.
        self._refused: dict[str, str] = {}
        self.written = 0

    def add(self, name: str, *, changed: bool = True) -> None:
        """Write ``name``'s latest decision back (once, however often asked before it runs).

        ``changed``: whether the pass that asks decided something new; one that did not
        leaves a model the registry refused for good alone."""
        if name in self._refused:
            if not changed:
                return
            del self._refused[name]
        if name in self._running:
            self._again.add(name)
            return
        retry = self._retries.pop(name, None)
        if retry is not None:
            retry.cancel()  # asked for anew: at once, not after the backoff
        self._waiting.setdefault(name, None)
        self._ready.set()

    def behind(self, name: str) -> None:
        """The resync's hand (``Resync.once``): ``add`` unless ``name`` is waiting, running or
        backing off already, so a registry that keeps refusing is asked at the backoff's pace,
        not at every resync."""
        if name not in self._retries and name not in self._running:
            self.add(name, changed=False)

    def retry_refused(self) -> None:
        """The full resync's turn: what the registry refused for good is tried once more (a
        permission granted since), by the ``behind`` that follows."""
        self._refused.clear()

    def __len__(self) -> int:
        return len(self._waiting) + len(self._retries)

    def backlog(self) -> tuple[int, int]:
        """(the lane's jobs not done: waiting, running or backing off; models refused for
        good). A job may find nothing to write: the store's marks say what is behind."""
        pending = self._waiting.keys() | self._retries.keys() | self._running
        return len(pending), len(self._refused)

    async def finished(self, name: str) -> None:
        """Return once no write-back of ``name`` runs. A pass waits for it: read between a
        write-back's alias write and its acknowledgement, the alias would look like a
        person's move (``registry_sync.judged``) and be followed."""
        async with self._job_ended:
            await self._job_ended.wait_for(lambda: name not in self._running)

    def reset(self) -> None:
        """Forget every job (stepped down): the next leader's resync finds what is behind."""
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        self._waiting.clear()
        self._again.clear()
        self._attempts.clear()
        self._refused.clear()

    async def run(self) -> None:
        pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="sigserve-write-back")
        slots = asyncio.Semaphore(self._concurrency)
        jobs: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()
                try:
                    name = await self._next()
                except BaseException:
                    slots.release()
                    raise
                self._running.add(name)
                task = asyncio.create_task(self._run_one(name, pool))
                jobs.add(task)
                task.add_done_callback(functools.partial(self._ended, jobs, slots))
        finally:
            for task in jobs:
                task.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    def _ended(self, jobs: set[asyncio.Task[None]], slots: asyncio.Semaphore,
               task: asyncio.Task[None]) -> None:
        jobs.discard(task)
        slots.release()

    async def _next(self) -> str:
        """The oldest waiting name whose model no pass holds, once the worker's backlog is
        empty or it waited ``max_defer_s``."""
        since = self._clock()
        while True:
            if not self._waiting:
                self._ready.clear()
                await self._ready.wait()
                since = self._clock()
                continue
            overdue = self._clock() - since >= self._max_defer_s
            if overdue or not self._backlog():
                for name in self._waiting:
                    if not self._busy(name):
                        del self._waiting[name]
                        # Paced while the backlog lasts: each job waits for it anew, so a
                        # storm's write-backs trickle (one per slot per max_defer_s) and the
                        # rest follow at once when it ends.
                        return name
            await asyncio.sleep(self._poll_s)

    async def _run_one(self, name: str, pool: ThreadPoolExecutor) -> None:
        call = functools.partial(contextvars.copy_context().run, self._job, name)
        refused: str | None = None
        gave_way = False
        try:
            try:
                why = await asyncio.get_running_loop().run_in_executor(pool, call)
            except GaveWay:
                # A pass of the model waited: its verdict's remaining writes come after that
                # pass (the lane starts no job of a model a pass holds), not after a backoff.
                why, gave_way = None, True
            except RegistryRefused as exc:
                why = refused = str(exc)
            except (RegistryError, OperationalError, GenerationConflict) as exc:
                # The registry was down, the database locked, the model written meanwhile:
                # the job is safe to repeat.
                why = f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                log.exception("writing the verdict of %s back failed", name)
                why = f"{type(exc).__name__}: {exc}"
        finally:
            self._running.discard(name)
            async with self._job_ended:
                self._job_ended.notify_all()
        if name in self._again or gave_way:
            self._again.discard(name)
            self._attempts.pop(name, None)
            self.add(name)
        elif why is None:
            self._attempts.pop(name, None)
            self.written += 1
        elif refused is not None:
            self._attempts.pop(name, None)
            self._refused[name] = refused
            log.warning(
                "%s: the registry refused the verdict's write-back for good (%s); not tried "
                "again until the model is decided anew or the next full resync",
                name, refused, extra={"event": "write_back_refused", "model": name},
            )
        else:
            self._retry_later(name, why)

    def _retry_later(self, name: str, why: str) -> None:
        self._attempts[name] += 1
        delay = min(self._retry_max_s, self._retry_initial_s * 2 ** (self._attempts[name] - 1))
        log.warning("%s: writing the verdict back failed (%s); trying again in %.1fs",
                    name, why, delay)

        def retry() -> None:
            if self._retries.pop(name, None) is not None:
                self.add(name)

        self._retries[name] = asyncio.get_running_loop().call_later(delay, retry)



class Fenced:
    """A ``RegistryWriter`` that asks ``leading`` before each write, and ``wanted`` (whether a
    pass of the model waits or is queued) too: a write-back of a model with many versions
    decided is many writes (three tags a version, at ~0.6 s each in the storm), which its next
    pass waited for in full (the storm's 10-14 s to decided). Asked before a write only, so the
    alias is never left written and unacknowledged."""

    def __init__(
        self,
        writer: RegistryWriter,
        leading: Callable[[], bool],
        wanted: Callable[[], bool] = lambda: False,
    ) -> None:
        self._writer, self._leading, self._wanted = writer, leading, wanted

    def _ask(self, name: str) -> None:
        if not self._leading():
            raise SteppedDown(f"stopped leading while writing the verdict of {name} back")
        if self._wanted():
            raise GaveWay(f"a pass of {name} waits")

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._ask(name)
        self._writer.set_version_tag(name, version, key, value)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._ask(name)
        self._writer.set_alias(name, alias, version)

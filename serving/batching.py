"""Dynamic batching per model version: concurrent requests for one version, one predict call.

Each version (multiplexed model id) has its own queue and one task draining it. A request puts
its ``Work`` on the queue and awaits its own outputs. The drain task takes what is queued at
that moment, up to ``max_batch_size`` rows (a request's rows all count, and a request is never
split), and runs one predict for all of them in a worker thread; the outputs are cut back into
each request's share, by its rows, in order.

What may share a call is decided by whoever makes the ``Work`` (``serving.batch_inputs``, per
input kind): only requests with equal ``group`` and equal params share one, a ``None`` group
never does, and a ``Run`` that finds its parts cannot make one input exactly as each would
alone raises ``Unmergeable`` before calling the model, so each is predicted alone.

There is no fixed wait: a lone request is predicted at once, and while one batch predicts the
next one gathers in the queue, so batches grow with the load and cost nothing without it. A
positive ``wait_s`` (per call, else the batcher's default) bounds how long a batch that is not
full waits for more.

One bad record fails its own request only: when a predict call for several requests fails, or
answers a number of rows other than it was given, each request of it is predicted again alone,
so each gets its own answer or error, exactly as without batching. That means the model saw the
good requests twice; a version that answered a wrong number of rows (it does not answer one row
per record, so it can never be cut back) is not batched again. ``docs/architecture.md``
("Dynamic batching per version") says what a model sees, and the opt-out.

A call normally runs in a worker thread, so the event loop keeps taking requests while a model
predicts, under a deadline (``serving.deadlines``): a call that outlives it answers its callers
504 and leaves its version wedged (503) until it returns. A small call to a version whose rows
have been taking little time (a moving average per row, times the call's rows, under
``inline_below_s``) is made on the event loop instead: for a model that answers in a fraction
of a millisecond, the hop to a thread and back costs more than the call. The call's size
decides, not the average alone: only calls of at most ``inline_max_rows`` rows go inline, so
10,000 records to a fast model never stall the loop (and an inline call, which nothing can
interrupt, is always a tiny one).

No Ray in here: the queues are plain asyncio, so the batching is tested without a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.deadlines import Deadlines, wedged_error
from serving.exceptions import PredictTimeout

logger = logging.getLogger(__name__)

# Idle queues kept (each a few objects and its stats) before the oldest idle ones are dropped.
_MAX_QUEUES = 256
# Weight of the latest call in a version's moving average of the time per row.
_SMOOTHING = 0.2
# The most rows a call made on the event loop may have, however fast the model.
INLINE_MAX_ROWS = 64
# A call's deadline unless told: MLflow's scoring server's (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT).
DEFAULT_TIMEOUT_S = 60.0

# Predicts the parts of one call under params; returns the outputs of all parts, in order:
# ``sum(rows)`` of them when there are several parts (or raises).
Run = Callable[[list[Any], dict[str, Any] | None], Sequence[Any]]


@dataclass(frozen=True)
class Work:
    """One request's share of a predict call."""

    # What the ``Run`` reads: the request's records, its tensor...
    part: Any
    # Output rows the request gets back; what counts toward ``max_batch_size``.
    rows: int
    # Requests share a call only with equal groups; None: never.
    group: Hashable | None


class BatchSizeMismatch(RuntimeError):
    """A model answered a number of rows other than the number of rows it was given."""


class Unmergeable(Exception):
    """Raised by a ``Run`` before it calls the model: these parts cannot make one input."""


@dataclass
class _Item:
    work: Work
    params: dict[str, Any] | None
    params_key: str
    run: Run
    timeout_s: float
    future: asyncio.Future[list[Any]] = field(repr=False)


@dataclass
class BatchStats:
    """What one queue did: predict calls made and rows/requests they carried."""

    calls: int = 0
    requests: int = 0
    records: int = 0
    largest: int = 0
    retried_alone: int = 0
    inline: int = 0
    # Calls that outlived their deadline.
    timeouts: int = 0
    # Moving average of a call's time per row, seconds; None before the first call.
    row_s: float | None = None
    # False once the version answered a batch with a wrong number of rows: never batched again.
    rowwise: bool = True


class _VersionQueue:
    def __init__(self, key: str) -> None:
        self.key = key
        self.items: list[_Item] = []
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.stats = BatchStats()
        # False for a model whose predict waits on another process (an environment of its
        # own): a call that blocks on I/O is never made on the event loop, however fast.
        self.may_inline = True

    @property
    def idle(self) -> bool:
        return not self.items and (self.task is None or self.task.done())


class Batcher:
    """Batches requests per key (a multiplexed model id) and predicts them in worker threads."""

    def __init__(
        self,
        *,
        wait_s: float = 0.0,
        inline_below_s: float = 0.0,
        inline_max_rows: int = INLINE_MAX_ROWS,
        on_batch: Callable[[str, int], None] | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        self._wait_s = wait_s
        self._inline_below_s = inline_below_s
        self._inline_max_rows = inline_max_rows
        # Told the key and the rows of each batch formed (the batch-size metric).
        self._on_batch = on_batch
        self._deadlines = deadlines if deadlines is not None else Deadlines()
        self._queues: dict[str, _VersionQueue] = {}

    def stats(self) -> dict[str, BatchStats]:
        return {key: queue.stats for key, queue in self._queues.items()}

    async def predict(
        self,
        key: str,
        work: Work,
        params: dict[str, Any] | None,
        run: Run,
        *,
        max_batch_size: int,
        wait_s: float | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        may_inline: bool = True,
    ) -> list[Any]:
        """The outputs for ``work`` (one per row), predicted with whatever is queued.

        ``VersionWedged`` at once while a call of ``key`` runs past its deadline.
        """
        self._deadlines.check(key)
        queue = self._queues.get(key)
        if queue is None:
            self._prune()
            queue = self._queues[key] = _VersionQueue(key)
        queue.may_inline = may_inline
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        params_key = _params_key(params) if params else ""
        queue.items.append(_Item(work, params, params_key, run, timeout_s, future))
        queue.wakeup.set()
        if queue.task is None or queue.task.done():
            wait = self._wait_s if wait_s is None else wait_s
            queue.task = asyncio.create_task(
                self._drain(queue, max_batch_size, wait), name=f"sigserve-batch-{key}"
            )
        return await future

    def _prune(self) -> None:
        # Versions come and go (evicted, replaced); their idle queues go, oldest first.
        excess = len(self._queues) - _MAX_QUEUES + 1
        for key in [k for k, q in self._queues.items() if q.idle][: max(0, excess)]:
            del self._queues[key]

    async def _drain(self, queue: _VersionQueue, max_batch_size: int, wait_s: float) -> None:
        while queue.items:
            if wait_s > 0 and _rows(queue.items) < max_batch_size:
                await self._gather(queue, max_batch_size, wait_s)
            size = max_batch_size if queue.stats.rowwise else 1
            batch = _take(queue.items, size)
            batch = [item for item in batch if not item.future.done()]  # cancelled by clients
            if batch:
                if self._on_batch is not None:
                    self._on_batch(queue.key, _rows(batch))
                try:
                    await self._run(queue, batch)
                except BaseException as exc:  # cancelled while predicting: tell every waiter
                    _answer(batch, [exc] * len(batch))
                    raise
        queue.wakeup.clear()

    async def _gather(self, queue: _VersionQueue, max_batch_size: int, wait_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while _rows(queue.items) < max_batch_size and (left := deadline - loop.time()) > 0:
            queue.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.wakeup.wait(), left)

    async def _run(self, queue: _VersionQueue, batch: list[_Item]) -> None:
        stats = queue.stats
        stats.requests += len(batch)
        stats.records += _rows(batch)
        stats.largest = max(stats.largest, _rows(batch))
        try:
            _answer(batch, await self._call(queue, batch))
            return
        except PredictTimeout as exc:
            _answer(batch, [exc] * len(batch))
            self._refuse_queued(queue)
            return
        except Unmergeable:
            pass  # the model was not called: each alone, nothing seen twice
        except Exception as exc:
            if len(batch) == 1:
                _answer(batch, [exc])
                return
            if isinstance(exc, BatchSizeMismatch) and stats.rowwise:
                stats.rowwise = False
                logger.warning(
                    "%s answered %s; it is no longer batched (tag sigserve.max_batch_size=1 "
                    "says so from the start)",
                    queue.key,
                    exc,
                )
            logger.info(
                "a batch of %d requests failed (%s); predicting each alone", len(batch), exc
            )
            stats.retried_alone += len(batch)
        for item in batch:
            if item.future.done():
                continue
            try:
                _answer([item], await self._call(queue, [item]))
            except PredictTimeout as exc:
                _answer([item], [exc])
                self._refuse_queued(queue)
                _answer(batch, [wedged_error(queue.key)] * len(batch))
                return
            except Exception as exc:
                _answer([item], [exc])

    async def _call(self, queue: _VersionQueue, batch: list[_Item]) -> list[list[Any]]:
        """One predict call for ``batch``: inline when tiny, else in a thread under a deadline."""
        stats = queue.stats
        rows = _rows(batch)
        inline = (
            queue.may_inline
            and stats.row_s is not None
            and rows <= self._inline_max_rows
            and stats.row_s * rows < self._inline_below_s
        )
        if inline:
            outcome, took = _timed(batch)
        else:
            try:
                outcome, took = await self._deadlines.run(
                    queue.key, batch[0].timeout_s, _timed, batch
                )
            except PredictTimeout:
                stats.timeouts += 1
                raise
        if isinstance(outcome, Unmergeable):
            raise outcome  # the model was not called: nothing to count
        stats.calls += 1
        stats.inline += inline
        per_row = took / max(rows, 1)
        stats.row_s = (
            per_row
            if stats.row_s is None
            else (1 - _SMOOTHING) * stats.row_s + _SMOOTHING * per_row
        )
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _refuse_queued(self, queue: _VersionQueue) -> None:
        """A call of this version hangs: what waits behind it answers 503 now, not in minutes."""
        waiting, queue.items[:] = list(queue.items), []
        _answer(waiting, [wedged_error(queue.key)] * len(waiting))


def _timed(batch: list[_Item]) -> tuple[list[list[Any]] | Exception, float]:
    """``_predict(batch)`` or what it raised, and how long it took, timed where it runs (the
    hop to a thread and back is not the model's time)."""
    started = time.perf_counter()
    try:
        outcome: list[list[Any]] | Exception = _predict(batch)
    except Exception as exc:
        outcome = exc
    return outcome, time.perf_counter() - started


def _predict(batch: list[_Item]) -> list[list[Any]]:
    """Each item's outputs from one predict call for all of them."""
    first = batch[0]
    if len(batch) == 1:
        # Alone, a request gets whatever the model answered, one row per record or not.
        return [list(first.run([first.work.part], first.params))]
    outputs = list(first.run([item.work.part for item in batch], first.params))
    rows = _rows(batch)
    if len(outputs) != rows:
        raise BatchSizeMismatch(f"{len(outputs)} rows for {rows} rows of {len(batch)} requests")
    shares, start = [], 0
    for item in batch:
        shares.append(outputs[start : start + item.work.rows])
        start += item.work.rows
    return shares


def _answer(items: list[_Item], answers: Sequence[list[Any] | BaseException]) -> None:
    for item, answer in zip(items, answers, strict=True):
        if item.future.done():
            continue
        if isinstance(answer, BaseException):
            item.future.set_exception(answer)
        else:
            item.future.set_result(answer)


def _take(items: list[_Item], max_rows: int) -> list[_Item]:
    """The first queued item and those after it of its group and params, up to ``max_rows``."""
    first = items[0]
    batch, size, kept = [first], first.work.rows, []
    group = first.work.group
    for item in items[1:]:
        fits = size + item.work.rows <= max_rows
        same_kind = (item.work.group, item.params_key) == (group, first.params_key)
        if fits and group is not None and same_kind:
            batch.append(item)
            size += item.work.rows
        else:
            kept.append(item)
    items[:] = kept
    return batch


def _rows(items: list[_Item]) -> int:
    return sum(item.work.rows for item in items)


def _params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)

"""Dynamic batching per model version: concurrent requests for one version, one predict call.

Each version (multiplexed model id) has its own queue and one task draining it. A request puts
its records on the queue and awaits its own outputs. The drain task takes what is queued at
that moment, up to ``max_batch_size`` records (a request's whole list counts, and a request is
never split), and runs one predict for all of them in a worker thread; the outputs are cut
back into each request's share, in order.

There is no fixed wait: a lone request is predicted at once, and while one batch predicts the
next one gathers in the queue, so batches grow with the load and cost nothing without it. A
positive ``wait_s`` (per call, else the batcher's default) bounds how long a batch that is not
full waits for more (for models where one more record costs far less than one more call).

One bad record fails its own request only: when a batch of several requests fails, or answers
a number of rows that is not the number of records it was given (a model that does not answer
one row per record cannot be cut back), each request of it is predicted again alone, so each
gets its own answer or its own error, exactly as without batching. Requests with different
params never share a batch (params apply to a whole predict call).

A call normally runs in a worker thread, so the event loop keeps taking requests while a model
predicts. A version whose calls have been taking less than ``inline_below_s`` (a moving
average) is called on the event loop instead: for a model that answers in a fraction of a
millisecond, handing the call to a thread and back costs more than the call.

No Ray in here: the queues are plain asyncio, so the batching is tested without a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# Idle queues kept (each a few objects and its stats) before the oldest idle ones are dropped.
_MAX_QUEUES = 256
# Weight of the latest call in a version's moving average of call durations.
_SMOOTHING = 0.2

# Predicts a list of records under params; returns one output per record (or raises).
Predict = Callable[[list[Any], dict[str, Any] | None], Sequence[Any]]


class BatchSizeMismatch(RuntimeError):
    """A model answered a number of rows other than the number of records it was given."""


@dataclass
class _Item:
    records: list[Any]
    params: dict[str, Any] | None
    params_key: str
    predict: Predict
    future: asyncio.Future[list[Any]] = field(repr=False)


@dataclass
class BatchStats:
    """What one queue did: predict calls made and records/requests they carried."""

    calls: int = 0
    requests: int = 0
    records: int = 0
    largest: int = 0
    retried_alone: int = 0
    inline: int = 0
    # Moving average of a call's duration, seconds; None before the first call.
    call_s: float | None = None


class _VersionQueue:
    def __init__(self, key: str) -> None:
        self.key = key
        self.items: list[_Item] = []
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.stats = BatchStats()

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
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        self._wait_s = wait_s
        self._inline_below_s = inline_below_s
        # Told the key and the records of each batch formed (the batch-size metric).
        self._on_batch = on_batch
        self._queues: dict[str, _VersionQueue] = {}

    def stats(self) -> dict[str, BatchStats]:
        return {key: queue.stats for key, queue in self._queues.items()}

    async def predict(
        self,
        key: str,
        records: list[Any],
        params: dict[str, Any] | None,
        predict: Predict,
        *,
        max_batch_size: int,
        wait_s: float | None = None,
    ) -> list[Any]:
        """The outputs for ``records`` (one per record), predicted with whatever is queued."""
        queue = self._queues.get(key)
        if queue is None:
            self._prune()
            queue = self._queues[key] = _VersionQueue(key)
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        queue.items.append(_Item(records, params, _params_key(params), predict, future))
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
            if wait_s > 0 and _records(queue.items) < max_batch_size:
                await self._gather(queue, max_batch_size, wait_s)
            batch = _take(queue.items, max_batch_size)
            batch = [item for item in batch if not item.future.done()]  # cancelled by clients
            if batch:
                size = _records(batch)
                if self._on_batch is not None:
                    self._on_batch(queue.key, size)
                await self._run(queue.stats, batch, size)
        queue.wakeup.clear()

    async def _gather(self, queue: _VersionQueue, max_batch_size: int, wait_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while _records(queue.items) < max_batch_size and (left := deadline - loop.time()) > 0:
            queue.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.wakeup.wait(), left)

    async def _run(self, stats: BatchStats, batch: list[_Item], size: int) -> None:
        inline = stats.call_s is not None and stats.call_s < self._inline_below_s
        try:
            if inline:
                answers, calls, took = _predict_batch(batch)
            else:
                answers, calls, took = await asyncio.to_thread(_predict_batch, batch)
        except BaseException as exc:  # cancelled while predicting: tell every waiter
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            raise
        per_call = took / calls
        stats.call_s = (
            per_call
            if stats.call_s is None
            else (1 - _SMOOTHING) * stats.call_s + _SMOOTHING * per_call
        )
        stats.inline += inline
        stats.calls += calls
        stats.requests += len(batch)
        stats.records += size
        stats.largest = max(stats.largest, size)
        if calls > 1:
            stats.retried_alone += len(batch)
        for item, answer in zip(batch, answers, strict=True):
            if item.future.done():
                continue
            if isinstance(answer, Exception):
                item.future.set_exception(answer)
            else:
                item.future.set_result(answer)


def _predict_batch(batch: list[_Item]) -> tuple[list[list[Any] | Exception], int, float]:
    """Each item's outputs or error, how many predict calls that took, and how long (s).

    One call for the whole batch; if that fails with several requests in it, one per request.
    """
    started = time.perf_counter()
    if len(batch) == 1:
        # Alone, a request gets whatever the model answered, one row per record or not.
        return [_alone(batch[0])], 1, time.perf_counter() - started
    records = [record for item in batch for record in item.records]
    try:
        outputs = _checked(batch[0].predict, records, batch[0].params)
    except Exception as exc:
        logger.info("a batch of %d requests failed (%s); predicting each alone", len(batch), exc)
        answers = [_alone(item) for item in batch]
        return answers, 1 + len(batch), time.perf_counter() - started
    shares: list[list[Any] | Exception] = []
    start = 0
    for item in batch:
        shares.append(outputs[start : start + len(item.records)])
        start += len(item.records)
    return shares, 1, time.perf_counter() - started


def _checked(predict: Predict, records: list[Any], params: dict[str, Any] | None) -> list[Any]:
    outputs = list(predict(records, params))
    if len(outputs) != len(records):
        raise BatchSizeMismatch(f"{len(outputs)} rows answered for {len(records)} records")
    return outputs


def _alone(item: _Item) -> list[Any] | Exception:
    try:
        return list(item.predict(item.records, item.params))
    except Exception as exc:
        return exc


def _take(items: list[_Item], max_batch_size: int) -> list[_Item]:
    """The first queued item and those after it with the same params, up to the size."""
    first = items[0]
    batch, size, kept = [first], len(first.records), []
    for item in items[1:]:
        fits = size + len(item.records) <= max_batch_size
        if fits and item.params_key == first.params_key:
            batch.append(item)
            size += len(item.records)
        else:
            kept.append(item)
    items[:] = kept
    return batch


def _records(items: list[_Item]) -> int:
    return sum(len(item.records) for item in items)


def _params_key(params: dict[str, Any] | None) -> str:
    return json.dumps(params or {}, sort_keys=True, default=str)

"""Shadow traffic: a share of the default's requests also run on the candidate, off the path.

With a rollout's ``shadow`` share s > 0, each request the rollout routed to the default is, with
probability s, also sent to the candidate (docs/architecture.md, "Rollouts"):

- After the client's answer is sent: the API hands the job over in the response's background
  task, which Starlette runs once the body is out, and the job only joins a queue there. A
  client's request never waits for its shadow, and a shadow that fails never fails it.
- Through a bounded queue per rollout (``queue_size`` jobs, ``queue_bytes`` of bodies and answers
  held), drained by at most ``workers`` tasks: under load the shadow is what gives
  way, a job that finds the queue full is dropped and counted (``dropped``).
- Only while the replica is quiet: a shadow starts when no routed client request is in flight
  and none began or ended in the last ``quiet_s``, and at most ``budget`` shadows run at once.
  A shadow's predict shares the CPU (and the event loop, for a model predicted inline) with
  whatever request comes next, so on a busy replica it waits; one that waited past
  ``max_age_s`` is dropped and counted (``dropped``). Under a closed loop that keeps the
  replica busy, most shadows are dropped and the client's latency is the default's alone; the
  agreement gate judges only the shadows that ran and says how many were dropped
  (``controller.rollout_gates``).
- The candidate runs the same body through the same path as a client's request to it would
  (contract, batching, deadline), and the two answers are compared (``agree``); agreement is
  counted, and the latest disagreements are kept (inputs and both answers, cut to
  ``wire.rollout_report.MAX_SAMPLE_CHARS``) for the report (``serving.rollout_counts``). A
  candidate that fails (raises, times out, refuses) is counted ``failed``.
- Shadow requests are counted in their own metric (``on_result``), never in the client's
  request metrics nor in the rollout's per-version counts.

Comparison (``agree``): strings, ints, booleans, nulls and classes exactly; floats within the
rollout's ``rel_tol`` or ``abs_tol``; a list of numbers inside a row (an embedding) by cosine
similarity at least ``min_cosine``. The rows themselves (the answer's top-level list, or the
list under a key of its top-level object: ``/invocations``' ``predictions``, V2's ``outputs``)
are compared row by row, so a regressor's list of predictions is held to the float tolerance,
not to a cosine. V2's ``model_version`` names the version that answered and is not compared.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from serving.bodies import read_body
from serving.rollout_counts import RolloutCounts
from wire.rollout_report import MAX_SAMPLE_CHARS, Disagreement
from wire.routing_table import Rollout

logger = logging.getLogger(__name__)

QUEUE_SIZE = 64
# A shadow starts after this long without a client request beginning or ending (a closed-loop
# client's next request comes within it), waits at most MAX_AGE_S for that, and BUDGET run at
# once: figures in docs/benchmarks.md, "Rollouts".
QUIET_S = 0.002
MAX_AGE_S = 2.0
BUDGET = 1
# A client request counted in flight for longer than this without any other request is taken
# as ended (an answer whose end was never reported must not stop every shadow for good).
IN_FLIGHT_TRUST_S = 10.0
# Bodies and answers a rollout's queue may hold: 64 bodies of the 16 MiB a request may send would
# be a gigabyte held for shadows alone.
QUEUE_BYTES = 32 * 1024 * 1024
WORKERS = 2
# Top-level keys that name the answer rather than carry it.
_NOT_COMPARED = frozenset({"model_version"})

# The candidate's answer to the shadowed request, run on demand (off the client's path).
RunCandidate = Callable[[], Awaitable[Response]]
# (model, candidate version, result): agreed, disagreed, failed or dropped.
OnResult = Callable[[str, str, str], None]


@dataclass(slots=True)
class _Job:
    model: str
    rollout: Rollout
    body: bytes
    answer: bytes
    run: RunCandidate
    queued_at: float


@dataclass(slots=True)
class _Lane:
    model: str
    jobs: deque[_Job] = field(default_factory=deque)
    workers: int = 0
    held: int = 0  # bytes of the queued jobs' bodies and answers


class Shadows:
    def __init__(
        self,
        counts: RolloutCounts,
        *,
        queue_size: int = QUEUE_SIZE,
        queue_bytes: int = QUEUE_BYTES,
        workers: int = WORKERS,
        quiet_s: float = QUIET_S,
        max_age_s: float = MAX_AGE_S,
        budget: int = BUDGET,
        on_result: OnResult | None = None,
        draw: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``quiet_s=0`` runs each shadow at once, whatever the clients do and however many
        run (the behaviour before shadows gave way; the benchmark compares the two)."""
        self._counts = counts
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        self._workers = workers
        self._quiet_s = quiet_s
        self._max_age_s = max_age_s
        self._budget = budget
        self._on_result = on_result
        self._draw = draw
        self._clock = clock
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._last_client = -math.inf
        self._running = 0
        self._stopping = False

    def client_began(self) -> None:
        """A routed client request began (the request path: an increment and a clock read)."""
        self._in_flight += 1
        self._last_client = self._clock()

    def client_ended(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self._last_client = self._clock()

    def client_seen(self) -> None:
        """A client request that is not routed began: shadows wait for it too."""
        self._last_client = self._clock()

    def _quiet(self) -> float:
        """0 when a shadow may start now, else how long to wait before asking again."""
        if self._quiet_s <= 0:
            return 0.0
        since = self._clock() - self._last_client
        if self._in_flight and since < IN_FLIGHT_TRUST_S:
            return self._quiet_s
        if since < self._quiet_s:
            return self._quiet_s - since
        return 0.0 if self._running < self._budget else self._quiet_s

    def wants(self, rollout: Rollout) -> bool:
        """Whether a request the default answers under ``rollout`` is shadowed (one draw). One
        drawn while its queue is full is dropped (and counted) here: a busy replica then spends
        nothing more on it (its body kept, its answer copied, a task after the answer)."""
        if rollout.shadow <= 0 or self._draw() >= rollout.shadow:
            return False
        lane = self._lanes.get(rollout.id)
        if lane is not None and len(lane.jobs) >= self._queue_size:
            self._drop(lane.model, rollout)
            return False
        return True

    def offer(
        self, model: str, rollout: Rollout, body: bytes, answer: bytes, run: RunCandidate
    ) -> None:
        """Queue a shadow of a request already answered with ``answer``; dropped (and counted)
        when the rollout's queue is full. Never raises, never waits."""
        lane = self._lanes.get(rollout.id)
        if lane is None:
            lane = self._lanes[rollout.id] = _Lane(model)
        size = len(body) + len(answer)
        full = len(lane.jobs) >= self._queue_size or lane.held + size > self._queue_bytes
        if full or self._stopping:
            self._drop(model, rollout)
            return
        lane.jobs.append(_Job(model, rollout, body, answer, run, self._clock()))
        lane.held += size
        if lane.workers < self._workers:
            lane.workers += 1
            task = asyncio.get_running_loop().create_task(self._drain(rollout.id, lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait until every queued shadow has run or was dropped (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self, timeout_s: float) -> None:
        """A replica shutting down: the shadows running finish (up to ``timeout_s``), those
        still queued are dropped and counted, so the last report carries them all."""
        self._stopping = True
        try:
            await asyncio.wait_for(self.drain(), timeout_s)
        except TimeoutError:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def queued(self, model: str) -> int:
        return sum(len(lane.jobs) for lane in self._lanes.values() if lane.model == model)

    async def _drain(self, key: str, lane: _Lane) -> None:
        try:
            while lane.jobs:
                await self._until_quiet()
                if not lane.jobs:
                    break  # another worker of the lane took the last one meanwhile
                job = lane.jobs.popleft()
                lane.held -= len(job.body) + len(job.answer)
                if self._stopping or self._clock() - job.queued_at > self._max_age_s:
                    self._drop(job.model, job.rollout)
                    continue
                self._running += 1
                try:
                    await self._run(job)
                finally:
                    self._running -= 1
        finally:
            lane.workers -= 1
            if lane.workers == 0:
                # Jobs left only when cancelled at shutdown: they never ran.
                while lane.jobs:
                    self._drop(lane.model, lane.jobs.popleft().rollout)
                self._lanes.pop(key, None)

    async def _until_quiet(self) -> None:
        wait = self._quiet()
        while wait > 0 and not self._stopping:
            await asyncio.sleep(wait)
            wait = self._quiet()

    def _drop(self, model: str, rollout: Rollout) -> None:
        self._counts.shadow(model, rollout.id).dropped += 1
        self._result(model, rollout.candidate, "dropped")

    async def _run(self, job: _Job) -> None:
        tally = self._counts.shadow(job.model, job.rollout.id)
        candidate = job.rollout.candidate
        try:
            response = await job.run()
            theirs = _decode(bytes(response.body))
        except Exception as exc:  # the candidate's failure is the shadow's result, nothing more
            tally.failed += 1
            self._result(job.model, candidate, "failed")
            logger.debug("shadow of %s/%s failed: %s", job.model, candidate, str(exc)[:300])
            return
        ours = _decode(job.answer)
        tally.compared += 1
        if agree(ours, theirs, job.rollout):
            tally.agreed += 1
            self._result(job.model, candidate, "agreed")
            return
        self._result(job.model, candidate, "disagreed")
        tally.samples.append(
            Disagreement(
                input=_cut(job.body.decode("utf-8", "replace")),
                default=_cut(_text(ours)),
                candidate=_cut(_text(theirs)),
            )
        )

    def _result(self, model: str, version: str, result: str) -> None:
        if self._on_result is not None:
            self._on_result(model, version, result)


async def keep_body(request: Request, max_bytes: int | None) -> None:
    """Read the body now (under the same size limit) and keep it on the request, as Starlette's
    ``Request.body`` keeps it, so that the route reads it and the shadow can read it again."""
    request._body = await read_body(request, max_bytes)


def body_of(request: Request) -> bytes:
    body = getattr(request, "_body", b"")
    return body if isinstance(body, bytes) else b""


def agree(ours: Any, theirs: Any, rollout: Rollout) -> bool:
    """Whether two answers agree under ``rollout``'s tolerances (the module docstring says how)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        keys = set(ours) - _NOT_COMPARED
        if keys != set(theirs) - _NOT_COMPARED:
            return False
        return all(_agree(ours[k], theirs[k], rollout, rows=True) for k in keys)
    return _agree(ours, theirs, rollout, rows=True)


def _agree(ours: Any, theirs: Any, rollout: Rollout, *, rows: bool = False) -> bool:
    if isinstance(ours, bool) or isinstance(theirs, bool) or ours is None or theirs is None:
        return type(ours) is type(theirs) and ours == theirs
    if isinstance(ours, int | float) and isinstance(theirs, int | float):
        if isinstance(ours, int) and isinstance(theirs, int):
            return ours == theirs
        return _close(float(ours), float(theirs), rollout)
    if isinstance(ours, list) and isinstance(theirs, list):
        if len(ours) != len(theirs):
            return False
        if not rows and _vector(ours) and _vector(theirs) and _has_float(ours, theirs):
            return _cosine(ours, theirs) >= rollout.min_cosine
        return all(_agree(a, b, rollout) for a, b in zip(ours, theirs, strict=True))
    if isinstance(ours, dict) and isinstance(theirs, dict):
        if set(ours) != set(theirs):
            return False
        return all(_agree(ours[k], theirs[k], rollout) for k in ours)
    return type(ours) is type(theirs) and bool(ours == theirs)


def _close(a: float, b: float, rollout: Rollout) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rollout.rel_tol, abs_tol=rollout.abs_tol)


def _vector(values: list[Any]) -> bool:
    return bool(values) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    )


def _has_float(*vectors: list[Any]) -> bool:
    return any(isinstance(v, float) for vector in vectors for v in vector)


def _cosine(a: list[float], b: list[float]) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norm_a = math.sqrt(math.fsum(x * x for x in a))
    norm_b = math.sqrt(math.fsum(y * y for y in b))
    if norm_a == 0 or norm_b == 0:
        # A zero vector has no direction: it agrees only with another zero vector.
        return 1.0 if norm_a == norm_b else -1.0
    return dot / (norm_a * norm_b)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # not JSON (V2's binary tensors): compared byte for byte


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return json.dumps(value, default=str)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SAMPLE_CHARS else text[: MAX_SAMPLE_CHARS - 3] + "..."

"""Shadow traffic: a share of the default's requests also run on the candidate, off the path.

With a rollout's ``shadow`` share s > 0, each request the rollout routed to the default is, with
probability s, also sent to the candidate (docs/architecture.md, "Rollouts"):

- After the client's answer is sent: the API hands the job over in the response's background
  task, which Starlette runs once the body is out, and the job only joins a queue there. A
  client's request never waits for its shadow, and a shadow that fails never fails it.
- Through a bounded queue per model (``queue_size`` jobs, ``queue_bytes`` of bodies and answers
  held), drained by at most ``workers`` tasks per model: under load the shadow is what gives
  way, a job that finds the queue full is dropped and counted (``dropped``).
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
# Bodies and answers a model's queue may hold: 64 bodies of the 16 MiB a request may send would
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


@dataclass(slots=True)
class _Lane:
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
        on_result: OnResult | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._counts = counts
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        self._workers = workers
        self._on_result = on_result
        self._draw = draw
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def wants(self, rollout: Rollout) -> bool:
        """Whether a request the default answers under ``rollout`` is shadowed (one draw)."""
        return rollout.shadow > 0 and self._draw() < rollout.shadow

    def offer(
        self, model: str, rollout: Rollout, body: bytes, answer: bytes, run: RunCandidate
    ) -> None:
        """Queue a shadow of a request already answered with ``answer``; dropped (and counted)
        when the model's queue is full. Never raises, never waits."""
        lane = self._lanes.get(model)
        if lane is None:
            lane = self._lanes[model] = _Lane()
        size = len(body) + len(answer)
        if len(lane.jobs) >= self._queue_size or lane.held + size > self._queue_bytes:
            self._counts.shadow(model, rollout.id).dropped += 1
            self._result(model, rollout.candidate, "dropped")
            return
        lane.jobs.append(_Job(model, rollout, body, answer, run))
        lane.held += size
        if lane.workers < self._workers:
            lane.workers += 1
            task = asyncio.get_running_loop().create_task(self._drain(model, lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait until every queued shadow has run (tests, and a replica shutting down)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def queued(self, model: str) -> int:
        lane = self._lanes.get(model)
        return len(lane.jobs) if lane is not None else 0

    async def _drain(self, model: str, lane: _Lane) -> None:
        try:
            while lane.jobs:
                job = lane.jobs.popleft()
                lane.held -= len(job.body) + len(job.answer)
                await self._run(job)
        finally:
            lane.workers -= 1
            if lane.workers == 0 and not lane.jobs:
                self._lanes.pop(model, None)

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

"""A model's ``predict_stream`` over Server-Sent Events: sigserve's own extension of ``/serve``.

A client asks with ``Accept: text/event-stream`` on ``/models/{name}[/versions/{v}]/serve``
(``wants_stream``); the body, gate, contract and metric are the JSON call's. The answer:

    data: <chunk as JSON>          one event per chunk the model yields, in order
    : ping                         a comment, every ``KEEPALIVE_S`` while the model works
    data: [DONE]                   the stream ended (OpenAI's and Databricks' end marker)
    event: error                   the model failed or stalled after the first chunk was sent
    data: <problem+json>           (the status line, 200, is gone by then)

The first chunk is pulled before the status is sent (``first_events``), so what fails until
then is a plain problem answer (406 ``StreamUnsupported`` for a model that cannot stream). The
generator is pulled one chunk at a time in a worker thread, under the version's predict deadline
per chunk, the next pull only once the previous event was handed over (``ChunkStream``); a
client that leaves closes it (``ChunkEvents``). Why each of these: ``docs/architecture.md``,
"Streaming".
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import numpy as np
from fastapi.sse import EventSourceResponse, format_sse_event
from mlflow.exceptions import MlflowException
from starlette.types import Receive, Scope, Send

from serving.exceptions import (
    InvalidInput,
    ModelFailed,
    ModelRejectedInput,
    ProblemError,
)
from serving.problems import error_code
from wire.problems import problem_response
from wire.quality_values import weighted_items

logger = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"
DONE = b"data: [DONE]\n\n"
# A comment line (clients skip it), sent while the model works on a chunk; FastAPI's interval.
KEEPALIVE = b": ping\n\n"
KEEPALIVE_S = 15.0
# The metric's status for a stream whose client went away (nginx's code, as ``serving.api``).
CLIENT_GONE = 499

_DETAIL_LIMIT = 500
_END = object()

# Runs one pull of the generator in a worker thread, under the version's deadline.
Pull = Callable[[Callable[[], Any]], Awaitable[Any]]


def wants_stream(accept: str | None) -> bool:
    """Whether ``Accept`` asks for ``text/event-stream`` over JSON (``*/*`` and no header: JSON).

    Only the two types this route answers are weighed; a stream wins when it is acceptable and
    no JSON type is preferred to it (q-values as RFC 9110 gives them).
    """
    if not accept or EVENT_STREAM not in accept.lower():
        return False
    stream_q, json_q = 0.0, 0.0
    for media, q in weighted_items(accept):
        if media == EVENT_STREAM:
            stream_q = max(stream_q, q)
        elif media in ("application/json", "application/*"):
            json_q = max(json_q, q)
    return stream_q > 0 and stream_q >= json_q


def one_input(body: Any, records: list[Any]) -> None:
    """Refuse a body of several records: ``predict_stream`` reads a single input."""
    if len(records) != 1:
        field = "inputs" if isinstance(body, dict) else "body"
        reason = (
            f"holds {len(records)} records; a stream takes one (predict_stream reads one input)"
        )
        raise InvalidInput(f"{field}: {reason}", errors=[{"field": field, "reason": reason}])


def cannot_stream(model: Any) -> str | None:
    """Why ``model`` (a loaded pyfunc, or a stand-in) cannot stream; None when it can."""
    metadata = getattr(model, "metadata", None)
    flavors = getattr(metadata, "flavors", None)
    if isinstance(flavors, dict):
        # MLflow's own test (``pyfunc.load_model``): the flavor says so, else predict_stream
        # raises "This model does not support predict_stream method" at the first chunk.
        if flavors.get("python_function", {}).get("streamable"):
            return None
        return (
            "its MLmodel's python_function flavor is not streamable (MLflow marks a pyfunc so "
            "when its PythonModel defines predict_stream)"
        )
    if callable(getattr(model, "predict_stream", None)):
        return None
    return "its model has no predict_stream"


class ChunkStream:
    """A model's ``predict_stream`` generator, pulled one chunk at a time through ``pull``.

    A generator cannot be closed while another thread runs it ("generator already executing"),
    so ``close`` during a pull (the client left, the deadline passed) leaves the closing to that
    pull, which closes the generator in its thread when it returns.

    Every pull and the close run in one ``contextvars.Context`` of the stream's own: MLflow's
    ``PyFuncModel.predict_stream`` sets its prediction context in a ``with`` around the model's
    generator, entered at the first chunk and left after the last, and a context variable set
    in one context cannot be reset in another (each pull in a fresh copy, as
    ``asyncio.to_thread`` makes them, failed every real pyfunc's stream at its end).
    """

    def __init__(self, start: Callable[[], Iterator[Any]], pull: Pull) -> None:
        self._start = start
        self._pull = pull
        self._iterator: Iterator[Any] | None = None
        self._context = contextvars.copy_context()
        self._lock = threading.Lock()
        self._pulling = False
        self._closed = False
        self.count = 0

    async def next(self) -> Any:
        """The next chunk, or ``_END``; raises the problem its model raised (or its deadline)."""
        with self._lock:
            if self._closed:
                return _END
            self._pulling = True
        chunk = await self._pull(functools.partial(self._context.run, self._step))
        if chunk is not _END:
            self.count += 1
        return chunk

    def close(self) -> None:
        """Stop the generator (now, in a thread, or when the running pull returns)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pulling = self._pulling
        if not pulling:
            # Its ``finally`` is model code, which may block: not on the event loop.
            loop = asyncio.get_running_loop()
            loop.run_in_executor(None, self._context.run, self._close_generator)

    def _step(self) -> Any:
        try:
            if self._iterator is None:
                self._iterator = iter(self._start())
            return next(self._iterator)
        except StopIteration:
            return _END
        except MlflowException as exc:
            if exc.error_code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
                raise ModelRejectedInput(_cut(exc.message)) from None
            raise ModelFailed(_cut(f"MLflow failed to stream: {exc.message}")) from None
        except Exception as exc:
            logger.warning("predict_stream raised %s: %s", type(exc).__name__, _cut(str(exc)))
            raise ModelFailed(_cut(f"the model raised {type(exc).__name__}: {exc}")) from None
        finally:
            with self._lock:
                self._pulling = False
                closing = self._closed
            if closing:
                self._close_generator()

    def _close_generator(self) -> None:
        iterator, self._iterator = self._iterator, None
        close = getattr(iterator, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception as exc:  # the model's own cleanup: logged, never the client's problem
            logger.warning("closing predict_stream raised %s: %s", type(exc).__name__, exc)


def encode(chunk: Any) -> bytes:
    """One ``data:`` event; ``ModelFailed`` for a chunk that is not JSON."""
    try:
        text = json.dumps(chunk, default=_plain, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ModelFailed(_cut(f"the model yielded a chunk that is not JSON: {exc}")) from None
    return format_sse_event(data_str=text)


def error_event(exc: ProblemError, instance: str) -> bytes:
    """``event: error`` with the problem+json a plain answer would have had as its body."""
    body = problem_response(
        exc.status,
        slug=exc.slug,
        title=exc.title,
        detail=exc.detail,
        instance=instance,
        error_code=error_code(exc.status, exc.slug),
        **exc.extensions,
    ).body
    return format_sse_event(event="error", data_str=bytes(body).decode())


async def first_events(chunks: ChunkStream) -> bytes:
    """The first chunk's event (or the end), pulled before any status is sent: what goes wrong
    until then raises, and becomes a plain problem answer. The stream is closed if it raises."""
    try:
        chunk = await chunks.next()
        return DONE if chunk is _END else encode(chunk)
    except BaseException:
        chunks.close()
        raise


class ChunkEvents(EventSourceResponse):
    """The events of one stream, its first already pulled; ``on_end`` gets the stream's outcome
    (200, the status of the problem it ended with, or 499 when the client left) once it ended.

    Starlette stops a streaming response on a lost client only when a write fails; this one
    also listens for the disconnect, so a model between chunks is stopped at once.
    """

    def __init__(self, chunks: ChunkStream, first: bytes, instance: str) -> None:
        super().__init__(content=iter(()), headers={"Cache-Control": "no-cache"})
        # Proxies that buffer (nginx) pass events on at once with this.
        self.headers["X-Accel-Buffering"] = "no"
        self._chunks = chunks
        self._first = first
        self._instance = instance
        self.on_end: Callable[[int], None] = lambda status: None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome = CLIENT_GONE
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    nonlocal outcome
                    # OSError: the client's socket failed under a write; it left.
                    with contextlib.suppress(OSError):
                        outcome = await self._events(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            self._chunks.close()
            self.on_end(outcome)

    async def _events(self, send: Send) -> int:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        event, status = self._first, 200
        while event is not DONE:
            await send({"type": "http.response.body", "body": event, "more_body": True})
            try:
                chunk = await self._next(send)
                event = DONE if chunk is _END else encode(chunk)
            except ProblemError as exc:
                event, status = error_event(exc, self._instance), exc.status
                break
        await send({"type": "http.response.body", "body": event, "more_body": False})
        return status

    async def _next(self, send: Send) -> Any:
        """The next chunk; while the model works on it, a comment line every
        ``KEEPALIVE_S``, so that a proxy's idle timeout (nginx's is 60 s, the default predict
        deadline too) does not cut a stream whose model is slow between chunks."""
        pull = asyncio.ensure_future(self._chunks.next())
        try:
            while not (await asyncio.wait((pull,), timeout=KEEPALIVE_S))[0]:
                await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
            return pull.result()
        finally:
            pull.cancel()  # a no-op once it is done; else the client left or the app stops


def _plain(value: Any) -> Any:
    """What ``json`` cannot write by itself and a model commonly yields: numpy values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _cut(text: str) -> str:
    return text[:_DETAIL_LIMIT]

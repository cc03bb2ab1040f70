"""The worker's small parts (``controller/worker.py``): who asked for a name, a call in the
passes' own threads, and priming's first listing retried until the registry answers."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    wait_exponential,
)

T = TypeVar("T")
log = logging.getLogger("controller.worker")


@dataclass
class Ask:
    """Who asked for a waiting name (the audit log's actor) and the deliveries that did."""

    actor: str
    deliveries: list[str] = field(default_factory=list)


async def in_thread(pool: Executor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in ``pool``, with this task's context (its log trail), as
    ``asyncio.to_thread`` does in the default pool."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool, call)


async def list_until_listed(
    once: Callable[[], Awaitable[list[str] | None]], initial_s: float, max_s: float
) -> list[str]:
    """The names a full resync enqueued, asked again (capped backoff) for as long as the
    registry is not listed or the database fails: priming must outlive both."""
    listed: list[str] | None = await AsyncRetrying(
        retry=retry_if_result(lambda names: names is None) | retry_if_exception_type(),
        wait=wait_exponential(multiplier=initial_s, max=max_s),
        before_sleep=_log_priming_failure,
    )(once)
    assert listed is not None  # retried until listed
    return listed


def _log_priming_failure(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    if exc is not None:
        log.warning(
            "priming: the first resync failed (%s: %s); trying again", type(exc).__name__, exc
        )
    else:
        log.warning("priming: the registry could not be listed yet; trying again")

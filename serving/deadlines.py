"""A deadline on each ``predict`` call run in a worker thread, and the versions it left wedged.

A thread cannot be stopped. So when a call outlives its deadline, its callers are answered
504 (``PredictTimeout``) at once and the call is left to finish in its thread; meanwhile its
version is *wedged*: it takes no work (``VersionWedged``, 503 + Retry-After) until the call
returns, so requests do not pile up behind it, and other versions keep answering. A replica with
more wedged calls than ``max_wedged`` fails its health check, which makes Ray Serve replace it:
each wedged call holds a worker thread, and the pool they come from is small. See
``docs/architecture.md`` ("A predict that hangs").

The deadline costs no extra thread hop or task: the call is the same executor job
``asyncio.to_thread`` makes, awaited with a timeout.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from serving.exceptions import PredictTimeout, VersionWedged

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Threads for predict calls: enough that calls hung past their deadline (which fail the health
# check past ``max_wedged``) leave room for the calls that answer, until Ray replaces the replica.
PREDICT_THREADS = 32


class WedgedReplica(RuntimeError):
    """Raised by the health check: too many calls hang for the replica to be worth keeping."""


class Deadlines:
    """Runs calls for a key (a multiplexed model id) in worker threads, each with a deadline."""

    def __init__(self, *, max_wedged: int = 2, threads: int = PREDICT_THREADS) -> None:
        self._max_wedged = max_wedged
        # Predicts get threads of their own: in asyncio's default pool (cores + 4 threads) hung
        # calls starved the loads and the multiplexer's evictions that share it, and with them
        # every model of the replica, until Ray replaced it. Threads start only when needed.
        self._executor = ThreadPoolExecutor(
            max_workers=max(threads, max_wedged + 2), thread_name_prefix="sigserve-predict"
        )
        # Key -> its calls still running past their deadline.
        self._wedged: dict[str, int] = {}

    @property
    def wedged(self) -> dict[str, int]:
        """Per key, how many of its calls are running past their deadline."""
        return dict(self._wedged)

    def check(self, key: str) -> None:
        """Raise ``VersionWedged`` while a call of ``key`` runs past its deadline."""
        if key in self._wedged:
            raise wedged_error(key)

    def check_health(self) -> None:
        """Raise ``WedgedReplica`` when more than ``max_wedged`` calls hang."""
        hung = sum(self._wedged.values())
        if hung > self._max_wedged:
            raise WedgedReplica(
                f"{hung} predict calls are running past their deadline "
                f"({', '.join(sorted(self._wedged))}); more than {self._max_wedged} wedges the "
                "replica's worker threads"
            )

    async def run(self, key: str, timeout_s: float, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread; ``PredictTimeout`` if it outlives ``timeout_s``."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # as asyncio.to_thread does
        future = loop.run_in_executor(self._executor, functools.partial(context.run, fn, *args))
        try:
            done, _ = await asyncio.wait((future,), timeout=timeout_s)
        except asyncio.CancelledError:
            future.add_done_callback(_retrieved)  # the caller went; the call finishes anyway
            raise
        if done:
            return future.result()
        self._wedged[key] = self._wedged.get(key, 0) + 1
        future.add_done_callback(functools.partial(self._returned, key, loop.time()))
        logger.error(
            "a predict call of %s outlived its %.3gs deadline; the version takes no work until "
            "it returns",
            key,
            timeout_s,
        )
        name, version = _name_version(key)
        raise PredictTimeout(
            f"version {version} of {name!r} did not answer within {timeout_s:.3g}s",
            model=name,
            version=version,
            timeout_s=timeout_s,
        )

    def _returned(self, key: str, since: float, future: asyncio.Future[Any]) -> None:
        _retrieved(future)
        left = self._wedged.get(key, 0) - 1
        if left > 0:
            self._wedged[key] = left
        else:
            self._wedged.pop(key, None)
        hung = asyncio.get_running_loop().time() - since
        logger.warning("the wedged predict call of %s returned %.1fs past its deadline", key, hung)


def _retrieved(future: asyncio.Future[Any]) -> None:
    # Nobody awaits this call any more: what it raised is not an "exception never retrieved".
    if not future.cancelled():
        future.exception()


def wedged_error(key: str) -> VersionWedged:
    """The 503 a request to a wedged ``key`` gets (also told to those queued behind the call)."""
    name, version = _name_version(key)
    return VersionWedged(
        f"version {version} of {name!r} has a predict call running past its deadline; it takes "
        "no work until that call returns",
        model=name,
        version=version,
    )


def _name_version(key: str) -> tuple[str, str]:
    """``name/version@key`` read back from the right (a name may hold "/" and "@")."""
    rest = key.rpartition("@")[0] or key
    name, _, version = rest.rpartition("/")
    return (name, version) if name else (rest, "")

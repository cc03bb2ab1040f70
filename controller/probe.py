"""The registry's reachability as ``/readyz`` reports it: one ping in flight at most.

A hung MLflow (it takes connections and never answers) holds a ping for the client's whole
timeout (15 s). Were ``/readyz`` to wait for it, a readiness probe would time out and take the
controller out of its Service, which reporting MLflow's state instead of gating on it is meant to
prevent; and each probe would hold one of the few threads the admin API and webhooks run on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from controller.exceptions import RegistryUnavailable

# How long a report waits for the first ping's answer before saying it has none yet.
FIRST_ANSWER_WAIT_S = 1.0


class RegistryProbe:
    def __init__(self, ping: Callable[[], None]) -> None:
        self._ping = ping
        self._task: asyncio.Task[str] | None = None
        self._last: str | None = None

    async def _run(self) -> str:
        try:
            await asyncio.to_thread(self._ping)
            result = "ok"
        except RegistryUnavailable as exc:
            result = f"unreachable: {exc}"
        except Exception as exc:  # refused (say, unauthenticated): reported, never a 500
            result = f"failing: {type(exc).__name__}: {exc}"[:500]
        self._last = result
        return result

    async def check(self, *, fresh: bool) -> str:
        """The registry's state: a ping's answer, started now unless one is in flight.

        ``fresh`` waits for that answer (``/readyz?full=true`` gates on it). Otherwise the last
        answer is reported at once while the ping goes on (before any, up to
        ``FIRST_ANSWER_WAIT_S`` is waited for it).
        """
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        if fresh:
            return await asyncio.shield(self._task)
        if self._last is None:
            try:
                return await asyncio.wait_for(asyncio.shield(self._task), FIRST_ANSWER_WAIT_S)
            except TimeoutError:
                return "not known yet: the first ping has not answered"
        return self._last

"""Which controller leads when several share one PostgreSQL database.

The leader holds a PostgreSQL *session advisory lock* (``pg_try_advisory_lock``) on a connection
of its own, kept for as long as it leads. Chosen over a lease row: the server releases the lock
the moment the holder's session ends, so a leader that dies (SIGKILL, OOM: its kernel closes the
socket) is replaced within one election interval, with no clocks compared, no lease renewed by
writes and no TTL to wait out. A session that ends without a word (a host gone, a network cut) or
a leader frozen with its socket open is ended by the server: TCP keepalives and
``idle_session_timeout`` (``SIGSERVE_LEADER_SESSION_TIMEOUT_S``) on that session. Advisory locks
belong to one database, so deployments on other databases of one server do not meet. (Connect
directly or through a session-pooling proxy: a transaction pooler would hand the lock's session
to others.)

Each controller ticks the election every ``SIGSERVE_LEADER_ELECTION_INTERVAL_S`` (0.5 s): a
follower tries the lock, the leader checks that its session still answers. A leader whose
session fails or does not answer within ``ANSWER_WITHIN_S`` steps down at once (stops its worker)
rather than go on without the lock; the session is dropped, so it cannot keep the lock either.

What leadership buys is one reconcile loop, resync and registry write-back, not correctness: the
row locks and per-model generations of ``controller/store.py`` keep two controllers that both
believe they lead (for the moment before a cut-off leader notices) from deciding anything twice,
undoing a newer decision with an older registry snapshot, or publishing a revision twice; a new
leader's worker fences its predecessor's in-flight passes before its first
(``Store.fence_in_flight``, docs/architecture.md, "Stepping down"). On SQLite there is no
election: the one controller always leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from prometheus_client import Gauge
from sqlalchemy import Engine

log = logging.getLogger(__name__)

# The lock's key: one per database (advisory locks are per database), fixed for sigserve.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"sigserve.controller.leader").digest()[:8], "big") >> 1
# A leader whose lock session has not answered within this long steps down.
ANSWER_WITHIN_S = 2.0


class Role(enum.StrEnum):
    LEADER = "leader"
    FOLLOWER = "follower"


class AdvisoryLock:
    """The leader's lock on its own PostgreSQL session. Blocking: call from one thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        session_timeout_s: float,
        answer_within_s: float = ANSWER_WITHIN_S,
        key: int = LOCK_KEY,
    ) -> None:
        # What the engine itself would pass to psycopg.connect (host, socket dir, password...).
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        self._args = list(args)
        self._kwargs: dict[str, Any] = {
            **kwargs,
            "autocommit": True,
            "connect_timeout": max(1, round(answer_within_s * 2)),
            # The client notices a server that stopped answering on TCP; the server notices a
            # client host that is gone (and then releases the lock). Unused on a unix socket.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": 5000,
            "options": "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=1 "
            f"-c tcp_keepalives_count=3 -c statement_timeout={round(answer_within_s * 1000)}",
        }
        self._session_timeout_ms = round(session_timeout_s * 1000)
        self._key = key
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False
        self._abandon = threading.Event()

    def tick(self) -> bool:
        """Whether this session holds the lock now: taken if free, checked if held."""
        try:
            if self._abandon.is_set():
                self._abandon.clear()
                self.close()
            if self._conn is None:
                self._conn = self._connect()
            if self._held:
                self._conn.execute("SELECT 1")  # the session lives, so it holds its lock
            else:
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
                self._held = bool(row.fetchone()[0])  # type: ignore[index]
        except psycopg.Error as exc:
            log.warning("leader election: the lock's session failed (%s)", exc)
            self.close()
        if self._abandon.is_set():
            # Given up on while it ran (too slow): let go, the next tick starts afresh.
            self._abandon.clear()
            self.close()
        return self._held

    def abandon(self) -> None:
        """Called while a tick hangs: that tick's session is dropped as soon as it returns."""
        self._abandon.set()

    def close(self) -> None:
        """Let go of the lock (ending the session ends it)."""
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _connect(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] = psycopg.connect(*self._args, **self._kwargs)
        try:
            # PostgreSQL 14 and later: a leader frozen with its socket open loses the lock.
            conn.execute(f"SET idle_session_timeout = {self._session_timeout_ms}")
        except psycopg.Error as exc:
            log.warning("idle_session_timeout not set (%s): a frozen leader keeps the lock", exc)
        return conn


class Leadership:
    """This controller's role, kept by ticking the election; runs the role changes' hooks.

    Without a lock (SQLite) the controller leads from the start and never steps down.
    """

    def __init__(
        self,
        lock: AdvisoryLock | None,
        gauge: Gauge,
        *,
        interval_s: float = 0.5,
        answer_within_s: float = ANSWER_WITHIN_S,
    ) -> None:
        self._lock = lock
        self._gauge = gauge
        self._interval_s = interval_s
        self._answer_within_s = answer_within_s
        self.role = Role.LEADER if lock is None else Role.FOLLOWER
        self.since = time.time()  # when this controller took its role (epoch seconds)
        gauge.set(1 if self.role is Role.LEADER else 0)
        self.on_lead: Callable[[], Awaitable[None]] | None = None
        self.on_step_down: Callable[[], Awaitable[None]] | None = None
        # One thread of its own: the election must not wait behind admin calls that hold
        # the shared pool's threads (a leader starved of its heartbeat would step down).
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sigserve-election")
        self._in_flight: asyncio.Future[bool] | None = None
        self._stale = False

    @property
    def elected(self) -> bool:
        """Whether there is an election at all (several controllers may share the database)."""
        return self._lock is not None

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    async def tick(self) -> None:
        """One round: lead if the lock was won, step down if it was lost."""
        if self._lock is None:
            return
        held = await self._ask(self._lock)
        if held and self.role is Role.FOLLOWER:
            log.info("leader election: this controller leads")
            try:
                if self.on_lead is not None:
                    await self.on_lead()
            except Exception:
                # Half a leader is no leader: let the lock go for another controller (or this
                # one, next round) to take over whole.
                log.exception("taking over failed; letting the lock go")
                self._lock.abandon()
                if self.on_step_down is not None:
                    await self.on_step_down()
                return
            self._set(Role.LEADER)
        elif not held and self.role is Role.LEADER:
            log.warning("leader election: lock lost; this controller steps down")
            self._set(Role.FOLLOWER)
            if self.on_step_down is not None:
                await self.on_step_down()

    def _set(self, role: Role) -> None:
        self.role, self.since = role, time.time()
        self._gauge.set(1 if role is Role.LEADER else 0)

    async def _ask(self, lock: AdvisoryLock) -> bool:
        # One tick in flight at most: a hung session is waited for, never piled onto.
        if self._in_flight is None:
            self._in_flight = asyncio.get_running_loop().run_in_executor(
                self._executor, lock.tick
            )
        in_flight = self._in_flight
        try:
            # ``asyncio.timeout``, not ``wait_for``: Python 3.11's ``wait_for`` swallows a
            # cancellation that arrives as the tick returns, and the election loop of a stopping
            # controller then ran on forever (a test hung 1 run in 5).
            async with asyncio.timeout(self._answer_within_s):
                held = await asyncio.shield(in_flight)
        except TimeoutError:
            lock.abandon()
            self._stale = True
            return False
        except Exception:
            log.exception("leader election: the tick failed")
            held = False
        self._in_flight = None
        if self._stale:
            # The answer of a tick given up on: its session is being dropped.
            self._stale = False
            return False
        return held

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.tick()
            except Exception:
                log.exception("leader election failed; trying again")

    async def close(self) -> None:
        """Let go of the lock (a follower takes over within its interval) and the thread."""
        if self._lock is not None:
            self._lock.abandon()  # a tick still running lets go as it returns
            closing = asyncio.get_running_loop().run_in_executor(self._executor, self._lock.close)
            try:
                async with asyncio.timeout(self._answer_within_s):
                    await closing
            except TimeoutError:
                log.warning("the lock's session hangs; the server ends it (session timeout)")
        self._executor.shutdown(wait=False)

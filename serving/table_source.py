"""The routing table held by one ingress replica, and how it stays current.

A background task long-polls the controller:

    GET {controller_url}/routing-table?after={held revision, -1 if none}&epoch={held epoch}
        &timeout={seconds}&schema={SCHEMA_VERSION}
      200 + RoutingTable JSON   the controller holds a newer revision (at once if it already did)
                                or is of another epoch (its database was replaced)
      204                       nothing newer within ``timeout``: ask again

A push this way reaches every replica in milliseconds, and a replica that was away (restart,
network) catches up with one request, because it asks from the revision it holds. Connection
errors and bad answers are retried with a capped, jittered backoff; the task never lets an error
end it, so a controller outage only freezes the table, it never takes the replica down.

Static stability: each accepted table is also written to a ``TableStore`` (the Ray GCS, see
``serving.gcs_store``) and a starting replica reads that store first, so a replica started
while the controller is down serves the last decisions instead of 503s.

Each table accepted is also shown to a watcher, if any (the replica's prover,
``serving.proofs``, which loads and proves the versions the table says await a proof).

A table can be prepared for: ``prepare(new, answered)`` loads the versions ``new`` makes defaults
(``serving.model_host``). Only a default's switch waits for it; everything else in ``new`` is
answered at once, so a quarantine or a removal never waits behind a load. Until its new default
is warm, a model keeps answering for its default with the one it had, when that version is still
live in ``new`` (see docs/architecture.md, "No cold start"). A replica that answers nothing yet
answers its first table once its defaults are warm. Preparing never refuses a table.

Only a table with a higher revision than the one held, or from another epoch, is accepted:
answers can arrive out of order (a slow poll, the store, the controller) and an older table must
never win; but a controller whose database was replaced counts from 1 again and must be obeyed.

Every table is read by ``serving.signed_table``: with the serving token, a table whose signature
is missing or wrong is refused (docs/security.md, "The routing table's signature"), and a table
of a ``schema_version`` not in ``SCHEMAS_READ`` is refused before it is validated. The poll names
this replica's ``schema`` (``wire.routing_table.for_schema``). From the controller either
counts as a failed poll (logged once per run of failures, at WARNING) and goes through the same
backoff, and the table held stays: the controller would answer the same table at once, again and
again. From the store it is ignored, and overwritten by the next table this replica takes.

A controller holding as many long-polls as it allows answers 503 with ``Retry-After``
(``controller.long_poll``): the replica waits that long (at most ``BUSY_WAIT_MAX_S``), or its
backoff if longer, and asks again (``serving.table_poll_failures``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type

from serving.default_switch import default_key, held_back
from serving.signed_table import SchemaMismatch, SignedTable, decode, read_answer, read_stored
from serving.table_poll_failures import (
    ControllerBusy,
    FailureLog,
    Unauthorized,
    busy_wait,
    poll_wait,
    problem_type,
)
from wire.routing_table import SCHEMA_VERSION, SCHEMAS_READ, RoutingTable, changes, supersedes
from wire.table_signature import SIGNATURE_HEADER, TableSignatureError, table_key

__all__ = ["SchemaMismatch", "TableSource", "TableStore", "decode", "held_back"]

logger = logging.getLogger(__name__)

# A controller that answers 204 at once (not holding the poll) must not make a busy loop.
_MIN_EMPTY_POLL_S = 0.2
# The controller answers within ``timeout``; the margin covers its own latency.
_HTTP_MARGIN_S = 10.0
PROBLEM = "application/problem+json"
# The controller's answer past its cap on held polls (``controller.long_poll``).
TOO_MANY_POLLS = "urn:sigserve:problem:too-many-polls"


class TableStore(Protocol):
    """Where tables survive the replica: blocking calls, run in a thread."""

    def read(self) -> str | None: ...

    def write(self, table_json: str) -> None: ...


Prepare = Callable[[RoutingTable, RoutingTable | None], Awaitable[None]]


class TableSource:
    def __init__(
        self,
        controller_url: str,
        *,
        poll_timeout_s: float = 30.0,
        store: TableStore | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        prepare: Prepare | None = None,
        token: str | None = None,
        watch: Callable[[RoutingTable], None] | None = None,
    ) -> None:
        self._url = controller_url.rstrip("/") + "/routing-table"
        # The serving token (``SIGSERVE_SERVING_TOKEN``): the controller believes a replica's
        # later revision (a restored database) only with it, and may answer nothing without.
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Tables are taken only signed with the key derived from it; without it, unchecked
        # (a replica is never built so, ``serving.server``; tests' stand-in controllers are).
        self._key = table_key(token) if token else None
        self._poll_timeout_s = poll_timeout_s
        self._store = store
        self._transport = transport
        self._prepare = prepare
        # Told of each table accepted, on the loop, before any warm-up (``serving.proofs``).
        self._watch = watch
        # What requests are answered from: ``_latest``, or while some of its new defaults warm,
        # ``_latest`` with those models' old defaults (``held_back``).
        self._table: RoutingTable | None = None
        # The newest table accepted: what the poll asks after, and what the store keeps.
        self._latest: RoutingTable | None = None
        # Defaults (``default_key``) whose warm-up is over, whatever came of it.
        self._warmed: set[tuple[str, str, str, str]] = set()
        self._warming: set[asyncio.Task[None]] = set()
        # When the table held was taken (``time.monotonic``): its age, for the metrics.
        self._taken_at: float | None = None
        self._arrived = asyncio.Event()
        # Whether the controller answered a poll yet (``_poll_once``).
        self._answered = False
        self._task: asyncio.Task[None] | None = None

    @property
    def table(self) -> RoutingTable | None:
        return self._table

    @property
    def taken_at(self) -> float | None:
        """When the table held was taken (``time.monotonic()``), None before the first."""
        return self._taken_at

    def offer(self, table: RoutingTable) -> bool:
        """Answer from ``table`` at once, if it is newer than the one held; say whether taken."""
        if not self._accepts(table):
            return False
        self._latest = table
        self._watched(table)
        self._answer(table, table)
        return True

    async def take(self, table: RoutingTable) -> bool:
        """Accept ``table`` and answer from it at once, but for the defaults it moves, which
        switch once warm (``prepare``, run in the background). Says whether it was accepted."""
        if self._prepare is None or not self._accepts(table):
            return self.offer(table)
        previous = self._table
        self._latest = table
        self._watched(table)
        self._settle()
        task = asyncio.create_task(self._warm(table, previous), name="sigserve-table-warm")
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)
        return True

    def _watched(self, table: RoutingTable) -> None:
        if self._watch is None:
            return
        try:
            self._watch(table)
        except Exception:
            # Whatever watches must never cost the replica its table.
            logger.exception("a watcher of routing table %d failed", table.revision)

    def _accepts(self, table: RoutingTable) -> bool:
        if table.schema_version not in SCHEMAS_READ:
            logger.error("ignoring routing table with schema_version %s", table.schema_version)
            return False
        return supersedes(table, self._latest)

    async def _warm(self, table: RoutingTable, previous: RoutingTable | None) -> None:
        assert self._prepare is not None
        try:
            await self._prepare(table, previous)
        except Exception:
            logger.exception("preparing for routing table %d failed", table.revision)
        # Over, loaded or not: a default that failed to load is its first request's problem.
        self._warmed.update(default_key(n, m) for n, m in table.models.items())
        self._settle()

    def _settle(self) -> None:
        """Answer from as much of the latest table as is warm."""
        latest = self._latest
        if latest is None or latest is self._table:
            return
        answer = held_back(latest, self._table, self._warmed)
        if answer is None:
            return
        if answer is latest:
            # Only the defaults of the table answered are worth remembering.
            self._warmed &= {default_key(n, m) for n, m in latest.models.items()}
        elif answer == self._table:
            return  # still waiting for the same defaults
        self._answer(answer, latest)

    def _answer(self, table: RoutingTable, latest: RoutingTable) -> None:
        changed = changes(table, self._table)
        waiting = [
            f"{name}@default={model.default_version}"
            for name, model in latest.models.items()
            if (now := table.models.get(name)) is None
            or now.default_version != model.default_version
        ]
        self._table = table
        self._taken_at = time.monotonic()
        self._arrived.set()
        # The end of a registration's trail: the replica id is on every line of its log.
        logger.info(
            "took revision %d (%d models): %s%s",
            table.revision,
            len(table.models),
            ", ".join(changed) or "no version changed",
            f"; warming {', '.join(waiting)}" if waiting else "",
            extra={"event": "table_taken", "revision": table.revision, "epoch": table.epoch,
                   "changes": changed, "warming": waiting},
        )  # fmt: skip

    async def start(self, wait_s: float = 0.0) -> None:
        """Restore from the store, start polling, and wait up to ``wait_s`` for a first table."""
        if self._key is None:
            logger.warning(
                "no serving token (SIGSERVE_SERVING_TOKEN): routing tables are taken without "
                "checking their signature, so whoever answers for the controller or writes the "
                "store chooses what this replica runs"
            )
        await self._restore()
        self._task = asyncio.create_task(self._poll_forever(), name="sigserve-table-poll")
        if self._table is None and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait_s)

    async def stop(self) -> None:
        for task in [self._task, *self._warming]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None

    async def _restore(self) -> None:
        if self._store is None:
            return
        try:
            raw = await asyncio.to_thread(self._store.read)
            if raw and await self.take(read_stored(raw, self._key).table):
                # A starting replica reports ready with its defaults loaded.
                await asyncio.gather(*self._warming)
        except (SchemaMismatch, TableSignatureError) as exc:
            # Left by replicas of another release (the controller will send this one's schema),
            # or written by someone without the serving token: never taken.
            logger.warning("ignoring the stored routing table: %s", exc)
        except Exception:
            # A broken store must not stop the replica: the controller is the source of truth.
            logger.exception("could not restore the routing table from the store")

    async def _poll_forever(self) -> None:
        timeout = httpx.Timeout(self._poll_timeout_s + _HTTP_MARGIN_S, connect=5.0)
        async with httpx.AsyncClient(timeout=timeout, transport=self._transport) as client:
            log = FailureLog()
            # Transport errors, bad answers and tables of another schema alike are retried
            # with a capped, jittered backoff: this loop is the replica's only way to hear of
            # new decisions, so nothing may end it, and nothing may make it spin.
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(Exception),
                wait=poll_wait,
                before_sleep=log.failed,
                reraise=True,
            )
            loop = asyncio.get_running_loop()
            while True:
                started = loop.time()
                signed: SignedTable | None = await retrying(self._poll_once, client)
                log.answered(retrying.statistics.get("attempt_number", 1) - 1)
                if signed is None:
                    await asyncio.sleep(max(0.0, _MIN_EMPTY_POLL_S - (loop.time() - started)))
                elif await self.take(signed.table):
                    await self._persist(signed)

    async def _poll_once(self, client: httpx.AsyncClient) -> SignedTable | None:
        params: dict[str, str | int | float] = {
            "after": -1,
            "timeout": self._poll_timeout_s,
            "schema": SCHEMA_VERSION,
        }
        if self._latest is not None:
            params.update(after=self._latest.revision, epoch=self._latest.epoch)
            if not self._answered and self._latest.schema_version < SCHEMA_VERSION:
                # Restored as a replica of the release before got it: asked for again.
                params.update(after=self._latest.revision - 1)
        response = await client.get(self._url, params=params, headers=self._headers)
        self._answered |= response.status_code in (httpx.codes.OK, httpx.codes.NO_CONTENT)
        if response.status_code == httpx.codes.NO_CONTENT:
            return None
        if response.status_code == httpx.codes.UNAUTHORIZED:
            raise Unauthorized(
                "the controller refused this replica's serving token (401): "
                + ("SIGSERVE_SERVING_TOKEN is not set" if not self._headers else
                   "SIGSERVE_SERVING_TOKEN differs from the controller's")
            )  # fmt: skip
        if response.status_code == httpx.codes.SERVICE_UNAVAILABLE:
            full = response.headers.get("content-type", "").startswith(PROBLEM) and (
                problem_type(response) == TOO_MANY_POLLS
            )
            raise ControllerBusy(busy_wait(response), full)
        response.raise_for_status()
        if response.status_code != httpx.codes.OK:
            raise ValueError(f"unexpected status {response.status_code}")
        try:
            return read_answer(response.content, response.headers.get(SIGNATURE_HEADER), self._key)
        except TableSignatureError as exc:
            held = self._latest
            keeps = f"revision {held.revision}" if held is not None else "no table"
            raise type(exc)(f"{exc}; refused, this replica keeps {keeps}") from None

    async def _persist(self, signed: SignedTable) -> None:
        if self._store is None:
            return
        try:
            await asyncio.to_thread(_write_if_newer, self._store, signed, self._key)
        except Exception:
            logger.exception("could not write routing table %d to the store", signed.table.revision)


def _write_if_newer(store: TableStore, signed: SignedTable, key: bytes | None) -> None:
    # Every replica writes; reading first keeps a slow replica from putting an older table back.
    # The read and the write are not atomic: at worst the store lags one revision behind, which
    # only matters to a replica started while the controller is down.
    raw = store.read()
    if raw:
        # Unreadable, unsigned, mis-signed or of another schema: this replica's table replaces
        # it whatever its revision.
        with contextlib.suppress(ValueError):
            if not supersedes(signed.table, read_stored(raw, key).table):
                return
    store.write(signed.stored())

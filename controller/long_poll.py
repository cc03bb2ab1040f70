"""``GET /routing-table``: the long-poll the serving app's ingress replicas hold open.

``after`` and ``epoch`` say which table the caller has; the answer is 200 with a newer table as
soon as there is one (at once if there is already, or if the caller's epoch is not this
controller's), or 204 when ``timeout`` seconds pass with none. ``schema`` is the schema version
the caller reads (absent: 2, every replica before 3 sent none); the table answered is the one
such a replica must get (``wire.routing_table.for_schema``).

Who may call it and what it tells (docs/security.md, "The routing-table long-poll"): the table
names every artifact ``source``, which the serving API itself never shows, so with
``SIGSERVE_ROUTING_TABLE_NEEDS_TOKEN`` a caller without the serving token gets 401. Either way,
only a caller with the serving token is believed when it claims a later revision of this
epoch (a database restored from a backup, ``Store.catch_up``): anyone else's claim would be a
write, a broadcast and, unbounded, a revision no later table could be published above.

Every table answered is signed (``wire.table_signature``, in the ``X-Sigserve-Table-Signature``
header) with the key derived from the serving token; a controller without one answers unsigned
tables, which replicas refuse. The body is the table's canonical JSON, encoded and signed once
per table, not once per poll, and kept gzipped alone (made a model at a time, the plain JSON
never whole: ``controller.table_builder.gzipped_table``). A poll whose ``Accept-Encoding``
takes gzip (httpx's default: every replica) is answered those bytes with ``Content-Encoding:
gzip``, any other the plain JSON, inflated for that answer; either way the same bytes once
decoded, which the signature signs.

At most ``long_poll_max_concurrent`` polls are held open at once (``Services.long_poll_slots``);
past it a poll that would wait is answered 503 problem+json with ``Retry-After`` at once, so
held polls never take the sockets ``/healthz`` and the admin API need. A poll with a newer table
to take is answered whatever the count: it holds nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from typing import Annotated, NoReturn

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from controller.services import Services, services
from controller.serving_auth import presents_bearer
from controller.store import MAX_CATCH_UP
from controller.table_builder import gzipped_table
from wire.problems import problem_response
from wire.quality_values import weighted_items
from wire.routing_table import SCHEMA_UNSAID, SCHEMA_VERSION, RoutingTable, for_schema
from wire.table_signature import SIGNATURE_HEADER, table_key

log = logging.getLogger(__name__)

router = APIRouter()

# The largest revision the database's column holds (BIGINT): whatever a replica holds is below.
REVISION_MAX = 2**63 - 1
# A controller that refuses every poll for want of a token of its own says so, not every poll.
_UNCONFIGURED_LOG_EVERY_S = 60.0
# A full house of polls is logged at most this often (each refused poll would be a line).
_BUSY_LOG_EVERY_S = 60.0
# What a refused poll is told to wait: about a replica's own backoff, so a freed slot is soon
# taken again, without a flood of retries while the polls stay full.
BUSY_RETRY_AFTER_S = 2


@router.get("/routing-table", response_model=None)
async def routing_table(
    request: Request,
    svc: Annotated[Services, Depends(services)],
    after: Annotated[int, Query(ge=-1, le=REVISION_MAX)] = -1,
    timeout: Annotated[float, Query(ge=0)] = 0.0,
    epoch: Annotated[str | None, Query(max_length=64)] = None,
    schema: Annotated[int, Query(ge=1, le=1000)] = SCHEMA_UNSAID,
) -> Response:
    serving = presents_bearer(request, svc.settings.serving_token)
    if svc.settings.routing_table_needs_token and not serving:
        _refuse(request, svc)
    wait = min(timeout, svc.settings.long_poll_max_s)
    held = svc.broadcaster.current
    behind = serving and held is not None and epoch == held.epoch and after > held.revision
    if behind and svc.table_sync is not None and await svc.table_sync.refresh():
        # Another controller on this database published it (this one had not loaded it yet).
        held = svc.broadcaster.current
    if behind and held is not None and epoch == held.epoch and after > held.revision:
        # A replica saw a later revision of this database than it now has: it was restored
        # from a backup (or the serving token is in the wrong hands). Publish above what the
        # replica saw, a bounded step at a time, so replicas take it.
        caught = await asyncio.to_thread(svc.store.catch_up, after)
        log.warning(
            "a serving replica saw revision %d of epoch %s, above this database's %d (restored "
            "from a backup, or the serving token is in other hands): published the decisions "
            "as revision %d%s",
            after, held.epoch, held.revision, caught.revision,
            "" if caught.revision > after else
            f"; a catch-up moves the revision at most {MAX_CATCH_UP:,}, the replica's next "
            "polls move it on",
            extra={"event": "catch_up", "seen": after, "held": held.revision,
                   "revision": caught.revision, "epoch": held.epoch},
        )  # fmt: skip
        await svc.broadcaster.offer(caught)
    table = svc.broadcaster.newer(after, epoch)
    if table is None and wait > 0:
        slots = svc.long_poll_slots
        if slots.locked():
            return _busy(request, svc)
        async with slots:
            table = await svc.broadcaster.newer_than(after, epoch, wait)
    if table is None:
        return Response(status_code=204)
    body, signature = await _signed(request, svc, table, schema)
    # Caches must not answer a poll that takes no gzip with the gzipped body.
    headers = {"Vary": "Accept-Encoding"}
    if signature:
        headers[SIGNATURE_HEADER] = signature
    if takes_gzip(request.headers.get("accept-encoding", "")):
        headers["Content-Encoding"] = "gzip"
    else:
        # Off the event loop as the body's making is: ~10 MB of JSON at 10,000 versions.
        body = await asyncio.to_thread(zlib.decompress, body, wbits=31)
    return Response(body, media_type="application/json", headers=headers)


def takes_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value takes gzip (RFC 9110 12.5.3): named, or ``*``, with
    a q-value above 0; gzip named decides over ``*``."""
    named: float | None = None
    anything: float | None = None
    for coding, q in weighted_items(accept_encoding):
        if coding in ("gzip", "x-gzip"):
            named = q if named is None else max(named, q)
        elif coding == "*":
            anything = q
    found = named if named is not None else anything
    return found is not None and found > 0


async def _signed(
    request: Request, svc: Services, table: RoutingTable, schema: int
) -> tuple[bytes, str | None]:
    """The table's canonical JSON for a replica of ``schema``, gzipped, and its signature, made
    once per table and schema (kept on the app: during an upgrade both releases poll).

    Made in a thread (seconds at 50,000 versions, which ``/healthz``, the webhooks and the
    other polls must not wait for), by one task per table and schema: the polls that a new
    table wakes together all await that one making (each shielded from the others' going).

    Kept by the revision they carry, not with the table: a revision names one content (the
    broadcaster takes the revision it holds again only with the same content, and the store
    publishes above a revision it answered, ``controller.store_tables``), and the table's
    objects are freed when the broadcaster takes the next (or the same revision built anew,
    ``controller.broadcaster``), where a reference here would keep them alive."""
    key = min(schema, SCHEMA_VERSION)
    revision = (table.epoch, table.revision, table.schema_version)
    signed: dict[int, tuple[tuple[str, int, int], asyncio.Task[tuple[bytes, str | None]]]] = (
        getattr(request.app.state, "routing_table_signed", {})
    )
    cached = signed.get(key)
    if cached is None or cached[0] != revision:
        token = svc.settings.serving_token
        signing = table_key(token.get_secret_value()) if token is not None else None
        making = asyncio.create_task(_make([table], schema, signing))
        # Its error, if nobody is left to await it, is not "never retrieved".
        making.add_done_callback(lambda t: t.cancelled() or t.exception())
        cached = (revision, making)
        request.app.state.routing_table_signed = {
            **{k: v for k, v in signed.items() if v[0] == revision},
            key: cached,
        }
    try:
        return await asyncio.shield(cached[1])
    except Exception:
        # Not kept: the next poll makes it again.
        now = getattr(request.app.state, "routing_table_signed", {})
        if now.get(key) is cached:
            request.app.state.routing_table_signed = {
                k: v for k, v in now.items() if v is not cached
            }
        raise


async def _make(
    held: list[RoutingTable], schema: int, key: bytes | None
) -> tuple[bytes, str | None]:
    """``gzipped_table`` of ``held``'s one table, in a thread. Handed over in a list the thread
    empties: the pool's work item keeps its arguments a moment after the answer, and the task
    its own until it is dropped; neither may keep the table alive past its replacement."""
    try:
        return await asyncio.to_thread(_encode, held, schema, key)
    finally:
        held.clear()


def _encode(held: list[RoutingTable], schema: int, key: bytes | None) -> tuple[bytes, str | None]:
    return gzipped_table(for_schema(held.pop(), schema), key)


def _busy(request: Request, svc: Services) -> JSONResponse:
    now = time.monotonic()
    last: float | None = getattr(request.app.state, "routing_table_busy_logged_at", None)
    if last is None or now - last > _BUSY_LOG_EVERY_S:
        request.app.state.routing_table_busy_logged_at = now
        log.warning(
            "refusing routing-table polls: %d are held open, the most allowed "
            "(SIGSERVE_LONG_POLL_MAX_CONCURRENT); more replicas than that, or callers holding "
            "polls they do not need",
            svc.long_poll_slots_max,
            extra={"event": "long_polls_full", "held": svc.long_poll_slots_max},
        )
    return problem_response(
        503, slug="too-many-polls", title="Too many polls",
        detail=f"the controller holds {svc.long_poll_slots_max} routing-table polls, the most "
        "it allows; ask again after Retry-After",
        instance=request.url.path, retry_after=BUSY_RETRY_AFTER_S,
    )  # fmt: skip


def _refuse(request: Request, svc: Services) -> NoReturn:
    now = time.monotonic()
    last: float | None = getattr(request.app.state, "routing_table_refusal_logged_at", None)
    if svc.settings.serving_token is None and (
        last is None or now - last > _UNCONFIGURED_LOG_EVERY_S
    ):
        request.app.state.routing_table_refusal_logged_at = now
        log.error(
            "refusing a routing-table poll: SIGSERVE_ROUTING_TABLE_NEEDS_TOKEN is set but this "
            "controller has no SIGSERVE_SERVING_TOKEN, so no replica can take a table"
        )
    raise HTTPException(
        401, "a valid serving bearer token is required", headers={"WWW-Authenticate": "Bearer"}
    )

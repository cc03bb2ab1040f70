"""``POST /webhooks/mlflow``: verify, de-duplicate, enqueue, answer at once.

MLflow retries a delivery answered with 429/5xx, and its delivery thread waits for the answer,
so the decision is never made inside the request: the name goes to the worker's queue. On a
controller that follows another (two on one PostgreSQL) it goes to the leader instead, as a row
of ``reconcile_requests`` written in the transaction that records the delivery id: once the
delivery is recorded (and a retry of it would be dropped as a duplicate), so is the request.

A delivery that only reports one of the leader's own registry writes (a verdict tag, the alias:
``controller.own_writes``) is recorded and acknowledged like any other, but not enqueued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, BeforeValidator, StringConstraints, ValidationError

from controller.exceptions import InvalidRequest, PayloadTooLarge, WebhookRejected
from controller.own_writes import ALIAS_CREATED, TAG_SET, Write, alias_set, tag_set
from controller.services import Services, services
from controller.webhook_signature import verify

log = logging.getLogger(__name__)
router = APIRouter()
# MLflow's payloads are a few hundred bytes; anything near this is not one of them.
MAX_BODY = 1024 * 1024
_NAME = Annotated[str, StringConstraints(min_length=1, max_length=256)]
_WORD = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# The controller's own tag values are under 500 characters; a longer one is someone else's.
_MAX_VALUE = 1024


def _version_or_none(value: Any) -> str | None:
    # Only for the log line: a delivery is never refused over it.
    return str(value)[:64] if isinstance(value, str | int) and not isinstance(value, bool) else None


def _bounded(limit: int) -> Callable[[Any], str | None]:
    def text_or_none(value: Any) -> str | None:
        # Only to recognise the controller's own writes: a delivery is never refused over it,
        # and one that does not fit is simply not one of them.
        return value if isinstance(value, str) and len(value) <= limit else None

    return text_or_none


class PayloadData(BaseModel):
    name: _NAME
    # Version events name the version (``model_version.created``, tags, aliases).
    version: Annotated[str | None, BeforeValidator(_version_or_none)] = None
    # ``model_version_tag.set``: the tag; ``model_version_alias.created``: the alias.
    key: Annotated[str | None, BeforeValidator(_bounded(256))] = None
    value: Annotated[str | None, BeforeValidator(_bounded(_MAX_VALUE))] = None
    alias: Annotated[str | None, BeforeValidator(_bounded(256))] = None


class Payload(BaseModel):
    """What the controller reads of a delivery; MLflow's other fields are ignored."""

    entity: _WORD
    action: _WORD
    data: PayloadData

    def write(self) -> Write | None:
        """The registry write this delivery reports, if it is one the controller makes."""
        event, d = f"{self.entity}.{self.action}", self.data
        if d.version is None:
            return None
        if event == TAG_SET and d.key is not None and d.value is not None:
            return tag_set(d.name, d.version, d.key, d.value)
        if event == ALIAS_CREATED and d.alias is not None:
            return alias_set(d.name, d.alias, d.version)
        return None


@router.post("/webhooks/mlflow")
async def receive(request: Request, svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
    received_at = time.time()
    # Without a length (chunked), the body would be buffered whole before any check.
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        svc.metrics.webhooks.labels("no_length").inc()
        raise InvalidRequest("content-length", "is required (MLflow always sends it)")
    if int(declared) > MAX_BODY:
        svc.metrics.webhooks.labels("too_large").inc()
        raise PayloadTooLarge(f"a webhook body is at most {MAX_BODY} bytes")
    body = await request.body()
    if len(body) > MAX_BODY:
        svc.metrics.webhooks.labels("too_large").inc()
        raise PayloadTooLarge(f"a webhook body is at most {MAX_BODY} bytes")
    secret = svc.settings.webhook_secret
    if secret is None:
        svc.metrics.webhooks.labels("rejected").inc()
        raise WebhookRejected(
            "this controller has no SIGSERVE_WEBHOOK_SECRET; it trusts no delivery"
        )
    delivery_id = request.headers.get("x-mlflow-delivery-id")
    try:
        verify(
            secret=secret.get_secret_value(),
            delivery_id=delivery_id,
            timestamp=request.headers.get("x-mlflow-timestamp"),
            signature=request.headers.get("x-mlflow-signature"),
            body=body,
            now=received_at,
            max_age_s=svc.settings.webhook_max_age_s,
        )
    except WebhookRejected:
        svc.metrics.webhooks.labels("rejected").inc()
        raise
    assert delivery_id is not None  # verify() checked it
    try:
        payload = Payload.model_validate_json(body)
    except ValidationError as exc:
        # Checked before the delivery id is recorded: MLflow's retry of a delivery refused
        # here must not be dropped as a duplicate.
        svc.metrics.webhooks.labels("malformed").inc()
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequest(
            "body", f"not an MLflow webhook payload ({where}: {first['msg']})"
        ) from None
    event, name = f"{payload.entity}.{payload.action}", payload.data.name
    actor = f"webhook:{delivery_id}"
    wanted = not event.startswith("prompt")
    # The leader keeps the in-memory fast path; a follower hands the name over with the record.
    hand_off = (name, actor) if wanted and not svc.leadership.is_leader else None
    fields = {"event": "webhook", "delivery_id": delivery_id, "mlflow_event": event,
              "model": name, "version": payload.data.version}
    # Which tag or alias (never a tag's value: a person's may be anything, of any length).
    fields.update({k: v for k, v in (("tag", payload.data.key), ("alias", payload.data.alias))
                   if v is not None})
    if not await asyncio.to_thread(svc.store.record_delivery, delivery_id, event, hand_off):
        svc.metrics.webhooks.labels("duplicate").inc()
        log.info("webhook %s for %s: a duplicate of delivery %s", event, name, delivery_id,
                 extra={**fields, "result": "duplicate"})
        return {"status": "duplicate", "delivery_id": delivery_id}
    svc.heard_from(name, received_at, event)
    # After the record: a duplicate must not use up the write its first delivery explained.
    # Only the leader writes, so only its memory holds writes (a follower hands over as ever).
    write = payload.write() if wanted and hand_off is None else None
    if write is not None and svc.own_writes.consume(write):
        svc.metrics.webhooks.labels("own_write").inc()
        log.info("webhook %s for %s v%s: the controller's own write, nothing to reconcile "
                 "(delivery %s)", event, name, payload.data.version, delivery_id,
                 extra={**fields, "result": "own_write"})
        return {"status": "own_write", "delivery_id": delivery_id}
    svc.metrics.webhooks.labels("accepted").inc()
    if wanted and hand_off is None:
        svc.worker.enqueue(name, actor)
    version = f" v{payload.data.version}" if payload.data.version else ""
    log.info("webhook %s for %s%s (delivery %s%s)", event, name, version, delivery_id,
             ", handed to the leader" if hand_off else "", extra={**fields, "result": "accepted"})
    return {"status": "accepted", "delivery_id": delivery_id}

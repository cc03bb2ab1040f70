"""``POST /webhooks/mlflow``: verify, de-duplicate, enqueue, answer at once.

MLflow retries a delivery answered with 429/5xx, and its delivery thread waits for the answer,
so the decision is never made inside the request: the name goes to the worker's queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from controller.exceptions import InvalidRequest, WebhookRejected
from controller.services import Services, services
from controller.webhook_signature import verify

log = logging.getLogger(__name__)
router = APIRouter()


@router.post("/webhooks/mlflow")
async def receive(request: Request, svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
    received_at = time.time()
    body = await request.body()
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
        payload = json.loads(body)
        event = f"{payload['entity']}.{payload['action']}"
        name = payload["data"]["name"]
    except (ValueError, KeyError, TypeError) as exc:
        svc.metrics.webhooks.labels("malformed").inc()
        raise InvalidRequest(
            "body", "not an MLflow webhook payload (entity, action, data.name)"
        ) from exc
    if not await asyncio.to_thread(svc.store.record_delivery, delivery_id, event):
        svc.metrics.webhooks.labels("duplicate").inc()
        return {"status": "duplicate", "delivery_id": delivery_id}
    svc.metrics.webhooks.labels("accepted").inc()
    svc.last_webhook_at[name] = received_at
    if isinstance(name, str) and not event.startswith("prompt"):
        svc.worker.enqueue(name, f"webhook:{delivery_id}")
    log.info("webhook %s for %s (delivery %s)", event, name, delivery_id)
    return {"status": "accepted", "delivery_id": delivery_id}

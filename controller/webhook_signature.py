"""Verifying MLflow webhook deliveries (HMAC-SHA256 over ``{id}.{timestamp}.{body}``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from controller.exceptions import WebhookRejected

SIGNATURE_VERSION = "v1"
# Seconds since 1970 in ASCII digits: twelve reach the year 33658. A longer one is no clock's,
# and as an int it would not fit the float it is compared with (OverflowError, a 500).
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(
    *,
    secret: str,
    delivery_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    max_age_s: float,
) -> None:
    """Raise ``WebhookRejected`` unless the delivery is signed with ``secret`` and fresh."""
    if not delivery_id or not timestamp or not signature:
        raise WebhookRejected(
            "missing X-MLflow-Delivery-Id, X-MLflow-Timestamp or X-MLflow-Signature"
        )
    if not _TIMESTAMP.fullmatch(timestamp):
        raise WebhookRejected("X-MLflow-Timestamp is not a Unix timestamp")
    sent_at = int(timestamp)
    if abs(now - sent_at) > max_age_s:
        raise WebhookRejected(f"X-MLflow-Timestamp is more than {max_age_s:.0f}s from now")
    expected = sign(secret, delivery_id, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise WebhookRejected("X-MLflow-Signature does not match the body")

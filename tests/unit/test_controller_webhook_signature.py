"""Webhook verification against the signature MLflow itself computes."""

from __future__ import annotations

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from controller.exceptions import WebhookRejected
from controller.webhook_signature import verify

BODY = b'{"entity": "model_version", "action": "created", "data": {"name": "m"}}'


def test_mlflow_signature_verifies() -> None:
    signature = _generate_hmac_signature("s3cret", "d-1", "1700000000", BODY.decode())
    verify(secret="s3cret", delivery_id="d-1", timestamp="1700000000", signature=signature,
           body=BODY, now=1700000010, max_age_s=300)


@pytest.mark.parametrize(
    ("secret", "timestamp", "now", "message"),
    [
        ("wrong", "1700000000", 1700000010, "does not match"),
        ("s3cret", "1700000000", 1700001000, "more than 300s"),
        ("s3cret", "yesterday", 1700000010, "not a Unix timestamp"),
    ],
)
def test_rejections_say_why(secret: str, timestamp: str, now: float, message: str) -> None:
    signature = _generate_hmac_signature("s3cret", "d-1", "1700000000", BODY.decode())
    with pytest.raises(WebhookRejected, match=message):
        verify(secret=secret, delivery_id="d-1", timestamp=timestamp, signature=signature,
               body=BODY, now=now, max_age_s=300)


def test_tampered_body_is_rejected() -> None:
    signature = _generate_hmac_signature("s3cret", "d-1", "1700000000", BODY.decode())
    with pytest.raises(WebhookRejected):
        verify(secret="s3cret", delivery_id="d-1", timestamp="1700000000", signature=signature,
               body=BODY.replace(b'"m"', b'"x"'), now=1700000000, max_age_s=300)


def test_missing_headers_are_rejected() -> None:
    with pytest.raises(WebhookRejected, match="missing"):
        verify(secret="s", delivery_id=None, timestamp="1", signature="v1,x", body=BODY,
               now=1, max_age_s=300)

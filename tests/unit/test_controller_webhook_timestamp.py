"""A webhook's ``X-MLflow-Timestamp`` that no clock can hold is a bad timestamp (401), not a
500: before issue 16 a 400-digit one made ``verify`` raise OverflowError."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from controller.app import create_app
from controller.exceptions import WebhookRejected
from controller.settings import ControllerSettings
from controller.webhook_signature import verify
from sigserve.ports import free_port

SECRET = "webhook-secret-of-32-characters!"
HUGE = "9" * 400
BODY = json.dumps({"entity": "model_version", "action": "created", "data": {"name": "m"}})


@pytest.fixture()
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = ControllerSettings(
        home=tmp_path,
        admin_token="admin-token-of-24-characters",
        webhook_secret=SECRET,
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        resync_interval_s=3600,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("timestamp", [HUGE, "-" + HUGE, "1e400"])
def test_a_timestamp_no_clock_holds_is_rejected_naming_the_header(timestamp: str) -> None:
    signature = _generate_hmac_signature(SECRET, "d-1", timestamp, BODY)
    with pytest.raises(WebhookRejected, match="X-MLflow-Timestamp"):
        verify(
            secret=SECRET,
            delivery_id="d-1",
            timestamp=timestamp,
            signature=signature,
            body=BODY.encode(),
            now=time.time(),
            max_age_s=300,
        )


@pytest.mark.parametrize("signed", [True, False])
def test_a_400_digit_timestamp_is_a_401_problem_not_a_500(client: TestClient, signed: bool) -> None:
    signature = _generate_hmac_signature(SECRET if signed else "not-the-secret", "d-1", HUGE, BODY)
    headers = {
        "content-type": "application/json",
        "X-MLflow-Delivery-Id": "d-1",
        "X-MLflow-Timestamp": HUGE,
        "X-MLflow-Signature": signature,
    }
    r = client.post("/webhooks/mlflow", content=BODY.encode(), headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"] == "urn:sigserve:problem:webhook-rejected"
    assert "X-MLflow-Timestamp" in r.json()["detail"]

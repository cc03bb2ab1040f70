"""Hostile clients against the session's real stack (issue 16, s1's items): what they send is
refused from the headers or within a bound, and costs the controller and the replica little.
Each case takes a second or two on the stack the session already runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from sigserve.stack import Secrets
from tests.integration.conftest import ControllerHandle, register_echo, serve_status, wait_for
from tests.unit.test_controller_body_limits import MIB, Controller, _json_body, _kib, send

pytestmark = pytest.mark.integration


def _controller(ctl: ControllerHandle) -> Controller:
    assert ctl._process is not None and ctl._process.pid is not None
    return Controller(ctl.port, ctl._process.pid)


def test_an_unauthenticated_64_mib_body_leaves_the_controllers_memory_flat(
    ctl: ControllerHandle,
) -> None:
    running = _controller(ctl)
    Path(f"/proc/{running.pid}/clear_refs").write_text("5")
    before = _kib(running.pid, "VmRSS")
    answer = send(running, "PUT", "/admin/models/x/default", chunks=_json_body(64 * MIB))
    grew_mib = (_kib(running.pid, "VmHWM") - before) / 1024
    assert answer.status == 401
    assert grew_mib < 4, f"the controller's peak RSS grew {grew_mib:.1f} MiB"


def test_an_empty_bearer_token_is_refused(ctl: ControllerHandle) -> None:
    r = httpx.get(f"{ctl.url}/admin/models", headers={"Authorization": "Bearer"})
    assert r.status_code == 401
    assert r.json()["type"] == "urn:sigserve:problem:unauthorized"
    # httpx will not send a header value ending in a space; a socket will.
    answer = send(_controller(ctl), "GET", "/admin/models", token="")
    assert answer.status == 401


def test_a_400_digit_webhook_timestamp_is_a_401_naming_the_header(
    ctl: ControllerHandle, secrets: Secrets
) -> None:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = json.dumps({"entity": "model_version", "action": "created", "data": {"name": "m"}})
    huge = "9" * 400
    signature = _generate_hmac_signature(secrets.webhook_secret, "hostile-1", huge, body)
    r = httpx.post(
        ctl.webhook_url, content=body.encode(),
        headers={"content-type": "application/json", "X-MLflow-Delivery-Id": "hostile-1",
                 "X-MLflow-Timestamp": huge, "X-MLflow-Signature": signature},
    )  # fmt: skip
    assert r.status_code == 401
    assert "X-MLflow-Timestamp" in r.json()["detail"]


def test_ten_thousand_records_of_150_unknown_keys_get_a_small_422_from_the_replica(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "hostile_keys_echo"
    register_echo(name, tag="one")
    wait_for(lambda: serve_status(serving_url, name).status_code == 200)
    record = {"prompt": "x", **{f"a{i}": 0 for i in range(150)}}
    started = time.monotonic()
    r = httpx.post(f"{serving_url}/models/{name}/serve", json=[record] * 10_000, timeout=60)
    took = time.monotonic() - started
    assert r.status_code == 422
    assert len(r.content) < 16 * 1024, f"a {len(r.content)}-byte answer"
    assert "9,999 records after [0] were not checked" in r.json()["detail"]
    assert took < 15, f"{took:.1f}s to refuse"
    ok = httpx.post(f"{serving_url}/models/{name}/serve", json={"prompt": "still here"})
    assert ok.status_code == 200

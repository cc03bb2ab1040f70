"""Quarantine and release by hand through the admin API, kept across a controller restart, and
the audit log that records them."""

from __future__ import annotations

import httpx

from tests.integration.conftest import ControllerHandle, register_echo, serve_status, wait_for


def test_quarantine_by_hand_survives_a_restart_and_is_audited(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "override_echo"
    register_echo(name, tag="one")
    register_echo(name, tag="two")
    wait_for(lambda: serve_status(serving_url, name, "2").status_code == 200, 60)
    base = f"{ctl.url}/admin/models/{name}"

    r = httpx.post(f"{base}/versions/2/quarantine", json={"reason": "bad canary"},
                   headers=ctl.admin)
    assert r.status_code == 200, r.text
    wait_for(lambda: serve_status(serving_url, name, "2").status_code == 409, 5)
    assert serve_status(serving_url, name, "2").json()["reasons"][0].endswith(": bad canary")
    empty = httpx.post(f"{base}/versions/2/quarantine", json={"reason": " "}, headers=ctl.admin)
    assert empty.status_code == 422 and empty.json()["errors"][0]["field"] == "reason"

    ctl.stop()
    ctl.start()
    httpx.post(f"{ctl.url}/admin/reconcile", headers=ctl.admin)
    wait_for(lambda: ctl.state_of(name, "2") == "quarantined", 10)
    assert serve_status(serving_url, name, "2").status_code == 409

    r = httpx.post(f"{base}/versions/2/release", json={"reason": "fixed"}, headers=ctl.admin)
    assert r.status_code == 200, r.text
    wait_for(lambda: serve_status(serving_url, name, "2").status_code == 200, 5)

    events = httpx.get(f"{base}/events", params={"limit": 100}, headers=ctl.admin).json()
    overrides = [e for e in events["events"] if e["kind"] == "override"]
    assert [(e["actor"], (e["after"] or {}).get("action")) for e in overrides] == [
        ("admin", None), ("admin", "quarantine")]
    made_default = [e for e in events["events"] if e["kind"] == "pin"]
    assert made_default[-1]["actor"].startswith(("webhook:", "resync"))
    assert made_default[-1]["after"]["default_version"] == "1"
    assert made_default[-1]["at"].endswith("+00:00")

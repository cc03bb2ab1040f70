"""Lost deliveries, controller restarts and controller outages."""

from __future__ import annotations

import time
from typing import Any

import httpx
from mlflow import MlflowClient

from tests.integration.conftest import (
    RESYNC_INTERVAL_S,
    ControllerHandle,
    register_echo,
    serve_status,
    wait_for,
)


def _decisions(ctl: ControllerHandle) -> dict[str, Any]:
    models = httpx.get(f"{ctl.url}/admin/models", headers=ctl.admin).json()["models"]
    decisions = {m["name"]: ctl.model(m["name"]) for m in models}
    for model in decisions.values():
        # In memory only, and the alias/tag write-back's own webhooks move them.
        model.pop("last_webhook_at")
        model.pop("last_version_webhook_at")
    return decisions


def _settled_decisions(ctl: ControllerHandle) -> dict[str, Any]:
    """The decisions once two reads a second apart agree: earlier tests' models may still be
    moving (a write-back, a proof landing), and a restart must be compared with a still view."""
    last: dict[str, Any] = {}

    def settled() -> dict[str, Any] | None:
        nonlocal last
        previous, last = last, _decisions(ctl)
        return last if last == previous else None

    result: dict[str, Any] = wait_for(settled, 60, 1.0)
    return result


def _reconciled(ctl: ControllerHandle) -> float:
    metrics = httpx.get(f"{ctl.url}/metrics").text
    for line in metrics.splitlines():
        if line.startswith('sigserve_reconciles_total{result="ok"}'):
            return float(line.split()[-1])
    return 0.0


def test_lost_webhook_is_caught_by_resync(serving_url: str, ctl: ControllerHandle) -> None:
    name = "lost_hook"
    register_echo(name, tag="one")
    wait_for(lambda: ctl.state_of(name, "1") == "live")
    client = MlflowClient(ctl.tracking_uri)
    hooks = [h for h in client.list_webhooks() if h.url == ctl.webhook_url]
    assert hooks, "the controller registered its webhook"
    for hook in hooks:
        client.delete_webhook(hook.webhook_id)
    try:
        time.sleep(1.5)  # the server's webhook cache TTL is 1 s in this stack
        heard_at = ctl.model(name)["last_webhook_at"]
        register_echo(name, tag="two")
        registered = time.monotonic()
        wait_for(lambda: ctl.state_of(name, "2") == "live", RESYNC_INTERVAL_S + 5, 0.05)
        decided_after = time.monotonic() - registered
        # No delivery came for v2: the resync alone made it live, within one interval (plus
        # the time to read and decide it).
        assert ctl.model(name)["last_webhook_at"] == heard_at
        assert decided_after <= RESYNC_INTERVAL_S + 1.0
        wait_for(lambda: serve_status(serving_url, name, "2").status_code == 200, 30)
    finally:
        ctl.stop()
        ctl.start()  # registers its webhook again
    assert [h for h in client.list_webhooks() if h.url == ctl.webhook_url]


def test_restart_keeps_every_decision_and_serving_answers(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "restart_echo"
    register_echo(name, tag="one")
    register_echo(name, tag="bad", input_label="text")
    wait_for(lambda: ctl.state_of(name, "2") == "quarantined")
    wait_for(lambda: serve_status(serving_url, name, "2").status_code == 409)
    before = _settled_decisions(ctl)
    ctl.stop()
    statuses = {serve_status(serving_url, name, v).status_code for v in ("1", "2")}
    assert statuses == {200, 409}
    ctl.start()
    # Compare only after the restarted controller has reconciled every model at least once.
    wait_for(lambda: _reconciled(ctl) >= len(before), 30, 0.2)
    after = _decisions(ctl)
    assert after == before  # same states, reasons, decision times: nothing decided again


def test_new_serving_replica_answers_from_last_table_while_controller_is_down(
    serving_url: str, ctl: ControllerHandle
) -> None:
    import ray

    def serving_replicas() -> set[str]:
        named = ray.util.list_named_actors(all_namespaces=True)
        return {a["name"] for a in named if "Server" in a["name"] and "REPLICA" in a["name"]}

    name = "stable_echo"
    register_echo(name, tag="one")
    register_echo(name, tag="bad", input_label="text")
    wait_for(lambda: ctl.state_of(name, "2") == "quarantined")
    wait_for(lambda: serve_status(serving_url, name, "2").status_code == 409)
    ctl.stop()

    old = serving_replicas()
    assert old, "a serving replica is running"
    for actor_name in old:
        ray.kill(ray.get_actor(actor_name, namespace="serve"), no_restart=True)
    wait_for(lambda: (now := serving_replicas()) and not (now & old), 90, 0.5)

    ok = wait_for(lambda: (r := serve_status(serving_url, name, "1")).status_code == 200 and r,
                  60, 0.25)
    assert ok.json() == [{"answer": "one:hi"}]
    refused = serve_status(serving_url, name, "2")
    assert refused.status_code == 409
    assert any("'prompt'" in reason for reason in refused.json()["reasons"])


def test_deleted_versions_and_models_stop_being_served(
    serving_url: str, ctl: ControllerHandle
) -> None:
    # MLflow fires no webhook for a deletion: only the resync can see it.
    name = "deleted_echo"
    register_echo(name, tag="one")
    register_echo(name, tag="two")
    wait_for(lambda: serve_status(serving_url, name, "2").status_code == 200)
    client = MlflowClient(ctl.tracking_uri)
    client.delete_model_version(name, "2")
    wait_for(lambda: serve_status(serving_url, name, "2").status_code == 404,
             RESYNC_INTERVAL_S + 1.5, 0.05)
    assert serve_status(serving_url, name, "1").status_code == 200
    assert [v["version"] for v in ctl.model(name)["versions"]] == ["1"]

    client.delete_registered_model(name)
    wait_for(lambda: serve_status(serving_url, name).status_code == 404,
             RESYNC_INTERVAL_S + 1.5, 0.05)
    gone = httpx.get(f"{ctl.url}/admin/models/{name}", headers=ctl.admin)
    assert gone.status_code == 404

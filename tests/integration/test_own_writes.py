"""The controller's own registry writes do not come back as work (issue 20), on the session's
real ``mlflow server`` and controller: the webhooks its verdict tags and alias cause are counted
``own_write`` and reconcile nothing, while a person's tag is reconciled and put back."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from mlflow import MlflowClient

from tests.integration.conftest import ControllerHandle, register_echo, wait_for

NAME = "own_writes"
WRITES = ("model_version_tag.set", "model_version_alias.created")


def controller_log(ctl: ControllerHandle) -> list[dict[str, Any]]:
    found = []
    for line in (ctl.home / "logs" / "controller.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def own_write_count(ctl: ControllerHandle) -> float:
    text = httpx.get(f"{ctl.url}/metrics").text
    found = re.search(r'^sigserve_webhooks_total\{result="own_write"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def deliveries(ctl: ControllerHandle) -> list[dict[str, Any]]:
    """This model's tag and alias deliveries, as the controller logged them."""
    return [r for r in controller_log(ctl) if r.get("event") == "webhook"
            and r.get("model") == NAME and r.get("mlflow_event") in WRITES]


def reconciled_for(ctl: ControllerHandle, delivery_id: str) -> list[dict[str, Any]]:
    """Reconcile passes a delivery asked for (its id is on the pass's trail)."""
    return [r for r in controller_log(ctl) if r.get("event") == "reconcile"
            and delivery_id in r.get("delivery_ids", [])]


def test_own_tag_and_alias_writes_are_not_reconciled_and_a_persons_tag_is_put_back(
    serving_url: str, ctl: ControllerHandle
) -> None:
    client = MlflowClient(ctl.tracking_uri)
    counted_before = own_write_count(ctl)
    version = register_echo(NAME, tag="v1")
    wait_for(lambda: ctl.state_of(NAME, version) == "live", 60)

    def tags() -> dict[str, str]:
        return dict(client.get_model_version(NAME, version).tags)

    wait_for(lambda: tags().get("sigserve.state") == "live", 15)
    wait_for(lambda: client.get_registered_model(NAME).aliases.get("serving") == version, 15)

    # Every verdict tag and the alias, as finally written, came back as a delivery (MLflow
    # delivers on threads of its own, so they may trail the writes a little).
    def arrived() -> list[dict[str, Any]]:
        seen = deliveries(ctl)
        keys = {r.get("tag") for r in seen} | {r.get("alias") for r in seen}
        wanted = {"sigserve.state", "sigserve.reasons", "sigserve.decided_at", "serving"}
        return seen if wanted <= keys else []

    ours = wait_for(arrived, 15)
    assert [r["result"] for r in ours] == ["own_write"] * len(ours), ours
    for r in ours:
        assert reconciled_for(ctl, r["delivery_id"]) == [], r
    assert own_write_count(ctl) - counted_before >= len(ours)
    print(f"one registration: {len(ours)} own-write deliveries, none reconciled: "
          f"{sorted((r.get('tag') or r.get('alias'), r['delivery_id']) for r in ours)}")

    # A person sets the verdict tag to another value: reconciled, and put back.
    def state_writes(result: str) -> list[dict[str, Any]]:
        return [r for r in deliveries(ctl) if r.get("tag") == "sigserve.state"
                and (r["result"] == "own_write") == (result == "own_write")]

    ours_before = len(state_writes("own_write"))
    client.set_model_version_tag(NAME, version, "sigserve.state", "quarantined")
    [delivery] = wait_for(lambda: state_writes("someone's"), 15)
    assert delivery["result"] == "accepted"
    wait_for(lambda: reconciled_for(ctl, delivery["delivery_id"]), 15)
    wait_for(lambda: tags().get("sigserve.state") == "live", 15)
    # The put-back is the controller's own write: it comes back as one more own_write.
    wait_for(lambda: len(state_writes("own_write")) == ours_before + 1, 15)
    assert ctl.state_of(NAME, version) == "live"

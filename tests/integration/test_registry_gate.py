"""The gate where data scientists look, on the real stack through ``MlflowClient``: the pin as
the ``serving`` alias, the verdict as version tags, policies from model tags, no webhook loop."""

from __future__ import annotations

import re
import statistics
import time

import httpx
from mlflow import MlflowClient

from tests.integration.conftest import ControllerHandle, register_echo, serve_status, wait_for


def accepted_webhooks(ctl: ControllerHandle) -> float:
    text = httpx.get(f"{ctl.url}/metrics").text
    found = re.search(r'^sigserve_webhooks_total\{result="accepted"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_alias_moves_pin_tags_show_the_verdict_and_nothing_loops(
    serving_url: str, ctl: ControllerHandle
) -> None:
    client = MlflowClient(ctl.tracking_uri)
    name = "registry_gate"
    register_echo(name, tag="v1")
    register_echo(name, tag="v2")
    renamed = register_echo(name, tag="v3", input_label="text")
    wait_for(lambda: ctl.state_of(name, renamed) == "quarantined", 30)
    wait_for(lambda: client.get_registered_model(name).aliases.get("serving") == "1", 10)

    # Tags show every version's state and reasons, where the MLflow UI reads them (its REST API).
    def ui_tags(version: str) -> dict[str, str]:
        r = httpx.get(f"{ctl.tracking_uri}/ajax-api/2.0/mlflow/model-versions/get",
                      params={"name": name, "version": version})
        return {t["key"]: t["value"] for t in r.json()["model_version"].get("tags", [])}

    wait_for(lambda: ui_tags(renamed).get("sigserve.state") == "quarantined", 10)
    assert ui_tags(renamed)["sigserve.reasons"].startswith("input 'prompt' (string, required)")
    assert ui_tags("1")["sigserve.state"] == "live"

    # No loop: once settled, the controller's own tag writes bring no further deliveries.
    time.sleep(2)
    settled = accepted_webhooks(ctl)
    time.sleep(3)
    assert accepted_webhooks(ctl) == settled

    # The alias moved in MLflow to a compatible version moves the default within one webhook.
    took = []
    for target in ("2", "1", "2"):
        started = time.monotonic()
        client.set_registered_model_alias(name, "serving", target)
        wait_for(lambda t=target: ctl.model(name)["default_version"] == t, 10, 0.01)
        took.append(time.monotonic() - started)
    print(f"alias -> default moved: {[round(t * 1000) for t in took]} ms, "
          f"p50 {statistics.median(took) * 1000:.0f} ms")
    wait_for(lambda: serve_status(serving_url, name).json() == [{"answer": "v2:hi"}], 5)

    # To an incompatible one: refused with reasons, the alias put back, serving unchanged.
    client.set_registered_model_alias(name, "serving", renamed)
    wait_for(lambda: (ctl.model(name)["alias_refusal"] or {}).get("version") == renamed, 10)
    refusal = ctl.model(name)["alias_refusal"]
    assert refusal["reasons"][0].startswith("input 'prompt' (string, required) is missing")
    wait_for(lambda: client.get_registered_model(name).aliases.get("serving") == "2", 10)
    assert ctl.model(name)["default_version"] == "2"
    events = httpx.get(f"{ctl.url}/admin/models/{name}/events", headers=ctl.admin).json()
    assert events["events"][0]["kind"] in {"alias", "decision"}
    assert any(e["kind"] == "alias" and e["actor"].startswith("webhook:")
               for e in events["events"])

    # A pin through the admin API is visible as the alias.
    r = httpx.put(f"{ctl.url}/admin/models/{name}/default", json={"version": "1"},
                  headers=ctl.admin)
    assert r.status_code == 200, r.text
    wait_for(lambda: client.get_registered_model(name).aliases.get("serving") == "1", 10)


def test_the_policy_tag_set_through_mlflow_changes_decisions(
    serving_url: str, ctl: ControllerHandle
) -> None:
    client = MlflowClient(ctl.tracking_uri)
    name = "registry_policy"
    register_echo(name, tag="v1")
    renamed = register_echo(name, tag="v2", input_label="text")
    wait_for(lambda: ctl.state_of(name, renamed) == "quarantined", 30)
    client.set_registered_model_tag(name, "sigserve.compatibility", "none")
    # MLflow fires no webhook for a registered-model tag: the resync (4 s here) sees it.
    wait_for(lambda: ctl.state_of(name, renamed) == "live", 15)
    assert ctl.model(name)["policy"] == "none"
    # The admin API writes the tag too, so the two never disagree.
    r = httpx.put(f"{ctl.url}/admin/models/{name}/policy", json={"policy": "backward"},
                  headers=ctl.admin)
    assert r.status_code == 200, r.text
    assert client.get_registered_model(name).tags["sigserve.compatibility"] == "backward"
    assert ctl.state_of(name, renamed) == "quarantined"


def test_a_version_without_an_mlmodel_is_quarantined_and_its_model_goes_on(
    serving_url: str, ctl: ControllerHandle
) -> None:
    import mlflow

    client = MlflowClient(ctl.tracking_uri)
    name = "no_mlmodel"
    client.create_registered_model(name)
    # A run's artifact directory that is not an MLflow model (no log_model): files only.
    with mlflow.start_run() as run:
        mlflow.log_text("not a model", "weights/notes.txt")
    source = f"{run.info.artifact_uri}/weights"
    started = time.monotonic()
    bare = client.create_model_version(name, source=source, run_id=run.info.run_id).version
    wait_for(lambda: ctl.state_of(name, str(bare)) == "quarantined", 30, 0.01)
    print(f"registered without an MLmodel -> quarantined: "
          f"{(time.monotonic() - started) * 1000:.0f} ms")
    good = register_echo(name, tag="good")
    where = client.get_model_version_download_uri(name, str(bare))
    reasons = next(v for v in ctl.model(name)["versions"] if v["version"] == str(bare))["reasons"]
    assert f"no MLmodel file at {where}: this is not an MLflow model; log it with " \
           "mlflow.<flavor>.log_model" in reasons[0]
    # The first version that could be read defines the contract and becomes the default.
    wait_for(lambda: ctl.state_of(name, good) == "live", 30)
    model = ctl.model(name)
    assert model["default_version"] == good
    assert [i["name"] for i in model["contract"]["inputs"]] == ["prompt"]
    wait_for(lambda: serve_status(serving_url, name).json() == [{"answer": "good:hi"}], 15)
    assert serve_status(serving_url, name, str(bare)).status_code == 409
    # Still in the registry, not taken for deleted: it keeps its quarantine across resyncs.
    assert client.get_model_version(name, str(bare)).version == str(bare)

"""The contract gate end to end: decisions bound to artifacts, the environment check, and pins.

Each test uses its own registered model on the session's real stack (mlflow server, controller,
Ray Serve).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from tests.integration.conftest import (
    RESYNC_INTERVAL_S,
    ControllerHandle,
    load_attempted,
    register_echo,
    runner_loads,
    serve_status,
    wait_for,
)


class Poller:
    """Sends the old contract's request over and over, keeping every answer."""

    def __init__(self, url: str, name: str) -> None:
        self.answers: list[tuple[int, Any]] = []
        self._url, self._name = url, name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                r = client.post(f"{self._url}/models/{self._name}/serve", json={"prompt": "hi"})
                self.answers.append((r.status_code, r.json()))
                time.sleep(0.005)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def digest_of(ctl: ControllerHandle, name: str, version: str) -> str | None:
    r = httpx.get(f"{ctl.url}/admin/models/{name}", headers=ctl.admin)
    if r.status_code == 404:
        return None  # a tombstone: deleted from the registry, not back yet
    r.raise_for_status()
    for v in r.json()["versions"]:
        if v["version"] == version:
            return str(v["mlmodel_digest"]) if v["mlmodel_digest"] else None
    return None


@pytest.mark.parametrize("gap_seen", [False, True], ids=["within-one-resync", "after-a-resync"])
def test_a_model_created_again_with_a_breaking_first_version_never_answers_old_clients(
    serving_url: str, ctl: ControllerHandle, gap_seen: bool
) -> None:
    name = f"gate_recreated_{int(gap_seen)}"
    register_echo(name, tag="old")
    wait_for(lambda: serve_status(serving_url, name).status_code == 200, 60)
    old_digest = digest_of(ctl, name, "1")

    with Poller(serving_url, name) as poller:
        time.sleep(0.2)
        MlflowClient().delete_registered_model(name)
        if gap_seen:
            # The resync saw the model gone (no event fires for a deletion): a tombstone.
            wait_for(lambda: serve_status(serving_url, name).status_code == 404,
                     RESYNC_INTERVAL_S + 2, 0.05)
        # The same name and version number, an artifact that answers the same request with
        # another output: served under the old contract, it would answer 200 and break clients.
        assert register_echo(name, tag="new", output_label="label") == "1"
        wait_for(lambda: (digest_of(ctl, name, "1") or old_digest) != old_digest, 30)
        wait_for(lambda: serve_status(serving_url, name).status_code == 409, 30)
        time.sleep(0.3)

    new_answers = [a for s, a in poller.answers if s == 200 and "label" in str(a)]
    assert new_answers == [], new_answers[:3]
    assert any(s == 200 for s, _ in poller.answers)  # the old model answered before
    model = ctl.model(name)
    assert model["contract"]["outputs"][0]["name"] == "answer"  # kept: clients read it
    r = serve_status(serving_url, name)
    assert r.status_code == 409
    assert any("output 'answer'" in reason for reason in r.json()["reasons"])


def test_a_replica_holding_an_older_artifact_of_a_version_loads_the_decided_one(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "gate_reload"
    register_echo(name, tag="first")
    wait_for(lambda: serve_status(serving_url, name).status_code == 200, 60)
    assert serve_status(serving_url, name).json() == [{"answer": "first:hi"}]
    MlflowClient().delete_registered_model(name)
    register_echo(name, tag="second")  # compatible, same number, another artifact
    wait_for(lambda: serve_status(serving_url, name).json() == [{"answer": "second:hi"}], 30)
    ids = {i for i in runner_loads() if i.startswith(f"{name}/1@")}
    assert len(ids) == 2, ids  # two artifacts of v1, two keys: the old one was not reused


def test_a_version_needing_a_missing_package_is_409_before_any_request(
    serving_url: str, ctl: ControllerHandle
) -> None:
    # Under the environment policy ``shared``: the shared environment only, so a package it
    # lacks quarantines (under ``isolate``, the default, the version gets an environment of its
    # own: tests/unit/test_controller_own_environments.py, and E2's tests of the build).
    name = "gate_environment"
    register_echo(name, tag="fine")
    MlflowClient().set_registered_model_tag(name, "sigserve.environment", "shared")
    needy = register_echo(name, tag="needy", pip_requirements=["sigserve-absent-package==1.0"])
    wait_for(lambda: ctl.state_of(name, needy) == "quarantined", 30)
    reasons = next(v for v in ctl.model(name)["versions"] if v["version"] == needy)["reasons"]
    assert reasons == ["requirement 'sigserve-absent-package==1.0': package "
                       "'sigserve-absent-package' is not installed in the serving environment, "
                       "and the environment policy 'shared' serves a version in the serving "
                       "environment only (under 'isolate' it would get an environment of its "
                       "own)"]
    wait_for(lambda: serve_status(serving_url, name, needy).status_code == 409, 10)
    r = serve_status(serving_url, name, needy)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["reasons"] == reasons
    assert not load_attempted(name, needy)


def test_a_refused_pin_names_the_reasons_and_a_forced_pin_changes_the_contract(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "gate_pin"
    register_echo(name, tag="v1")
    renamed = register_echo(name, tag="v2", input_label="text")
    wait_for(lambda: ctl.state_of(name, renamed) == "quarantined", 30)
    url = f"{ctl.url}/admin/models/{name}/default"

    refused = httpx.put(url, json={"version": renamed}, headers=ctl.admin)
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["reasons"][0].startswith("input 'prompt' (string, required) is missing")
    assert ctl.model(name)["default_version"] == "1"

    forced = httpx.put(url, json={"version": renamed, "force": True}, headers=ctl.admin)
    assert forced.status_code == 200, forced.text
    body = forced.json()
    assert body["default_version"] == renamed
    assert body["contract"]["inputs"][0]["name"] == "text"
    states = {v["version"]: (v["state"], v["reasons"]) for v in body["versions"]}
    # Quarantined until now, it was never proven: it is, as the default, before it answers.
    assert states[renamed] == ("pending", [
        "being proven: loaded and called on its input example before its first request"])
    assert states["1"][0] == "quarantined"
    assert states["1"][1][0].startswith("input 'text' (string, required) is missing")
    # Published before the answer: serving proves it and follows, within a second or so when
    # the replica is idle (its proofs run one at a time, behind any earlier ones).
    wait_for(lambda: serve_status(serving_url, name, body={"text": "hi"}).status_code == 200, 30)
    assert ctl.state_of(name, renamed) == "live"
    assert serve_status(serving_url, name, body={"text": "hi"}).json() == [{"answer": "v2:hi"}]
    assert serve_status(serving_url, name, "1", body={"text": "hi"}).status_code == 409

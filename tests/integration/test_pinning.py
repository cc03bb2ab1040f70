"""Pinning the default version through the admin API, and the token that guards it: a pin
keeps the contract, adopting a version's signature (or forcing a breaking one) changes it."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.integration.conftest import (
    ECHO_MODEL,
    ControllerHandle,
    register_echo,
    serve_status,
    wait_for,
)


def test_pinned_default_takes_unversioned_requests(serving_url: str, ctl: ControllerHandle
                                                   ) -> None:
    name = "pin_echo"
    register_echo(name, tag="one")
    register_echo(name, tag="two")
    wait_for(lambda: ctl.state_of(name, "2") == "live")
    wait_for(lambda: serve_status(serving_url, name).status_code == 200)
    assert serve_status(serving_url, name).json() == [{"answer": "one:hi"}]

    url = f"{ctl.url}/admin/models/{name}/default"
    assert httpx.put(url, json={"version": "2"}).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert httpx.put(url, json={"version": "2"}, headers=wrong).status_code == 401
    assert ctl.model(name)["default_version"] == "1"

    r = httpx.put(url, json={"version": "2"}, headers=ctl.admin)
    assert r.status_code == 200, r.text
    assert r.json()["default_version"] == "2"
    wait_for(lambda: serve_status(serving_url, name).json() == [{"answer": "two:hi"}], 10)
    # An explicit version still wins over the default.
    assert serve_status(serving_url, name, "1").json() == [{"answer": "one:hi"}]


def test_pinning_an_unknown_version_is_a_clear_error(ctl: ControllerHandle) -> None:
    name = "pin_unknown"
    register_echo(name, tag="one")
    wait_for(lambda: ctl.state_of(name, "1") == "live")
    url = f"{ctl.url}/admin/models/{name}/default"
    r = httpx.put(url, json={"version": "9"}, headers=ctl.admin)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    r = httpx.put(url, json={"versoin": "1"}, headers=ctl.admin)
    assert r.status_code == 422
    assert {"version", "versoin"} <= {e["field"] for e in r.json()["errors"]}


def register_text_echo(name: str, *, tag: str, lang: bool) -> str:
    """A TaggedEcho reading 'text' and, with ``lang``, an optional 'lang' as well."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = [ColSpec("string", "text")]
    if lang:
        inputs.append(ColSpec("string", "lang", required=False))
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ECHO_MODEL),
            signature=ModelSignature(Schema(inputs), Schema([ColSpec("string", "answer")])),
            model_config={"tag": tag, "input_label": "text"},
            pip_requirements=[],
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def inputs_of(contract: dict[str, Any]) -> list[str]:
    return [i["name"] for i in contract["inputs"]]


def test_a_compatible_pin_keeps_the_contract_so_rolling_back_works(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "pin_rollback"
    register_text_echo(name, tag="one", lang=False)
    register_text_echo(name, tag="two", lang=True)
    wait_for(lambda: ctl.state_of(name, "2") == "live")
    url = f"{ctl.url}/admin/models/{name}/default"
    hi = {"text": "hi"}

    r = httpx.put(url, json={"version": "2"}, headers=ctl.admin)
    assert r.status_code == 200, r.text
    assert inputs_of(r.json()["contract"]) == ["text"]
    wait_for(lambda: serve_status(serving_url, name, body=hi).json() == [{"answer": "two:hi"}])
    # The new version misbehaves: the operator rolls back.
    started = time.monotonic()
    r = httpx.put(url, json={"version": "1"}, headers=ctl.admin)
    assert r.status_code == 200, r.text
    wait_for(lambda: serve_status(serving_url, name, body=hi).json() == [{"answer": "one:hi"}],
             10, 0.01)
    print(f"rollback: PUT -> serving answers v1 in {(time.monotonic() - started) * 1000:.0f} ms")
    assert [v["state"] for v in ctl.model(name)["versions"]] == ["live", "live"]

    # Adopting v2's signature is the explicit act: clients may send 'lang' now, so v1, which
    # does not read it, breaks the contract, and the answer says so.
    r = httpx.put(url, json={"version": "2", "adopt_contract": True}, headers=ctl.admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert inputs_of(body["contract"]) == ["text", "lang"] and body["contract_changed"]
    assert [(c["version"], c["after"]) for c in body["redecided"]] == [("1", "quarantined")]
    wait_for(lambda: serve_status(serving_url, name, "1", body=hi).status_code == 409)
    assert serve_status(serving_url, name, body=hi).json() == [{"answer": "two:hi"}]
    assert httpx.put(url, json={"version": "1"}, headers=ctl.admin).status_code == 409


def test_under_exact_another_signature_takes_force_both_ways(
    serving_url: str, ctl: ControllerHandle
) -> None:
    from mlflow import MlflowClient

    name = "pin_exact"
    MlflowClient(ctl.tracking_uri).create_registered_model(
        name, tags={"sigserve.compatibility": "exact"})
    register_text_echo(name, tag="one", lang=False)
    register_text_echo(name, tag="two", lang=True)
    wait_for(lambda: ctl.state_of(name, "2") == "quarantined")
    assert ctl.model(name)["policy"] == "exact"
    url = f"{ctl.url}/admin/models/{name}/default"
    hi = {"text": "hi"}

    # Under exact v2 differs from the contract: a pin that keeps the contract cannot take it.
    refused = httpx.put(url, json={"version": "2"}, headers=ctl.admin)
    assert refused.status_code == 409 and refused.json()["reasons"]
    assert ctl.model(name)["default_version"] == "1"
    r = httpx.put(url, json={"version": "2", "force": True}, headers=ctl.admin)
    assert r.status_code == 200, r.text
    # v2 was never proven (quarantined until now): it is, as the default, then answers.
    assert [(c["version"], c["after"]) for c in r.json()["redecided"]] == [
        ("1", "quarantined"), ("2", "pending")]
    wait_for(lambda: serve_status(serving_url, name, body=hi).json() == [{"answer": "two:hi"}])
    assert ctl.state_of(name, "2") == "live"
    # v1 was live under the old contract, not under this one: back takes force too.
    assert httpx.put(url, json={"version": "1"}, headers=ctl.admin).status_code == 409
    r = httpx.put(url, json={"version": "1", "force": True}, headers=ctl.admin)
    assert r.status_code == 200, r.text
    wait_for(lambda: serve_status(serving_url, name, body=hi).json() == [{"answer": "one:hi"}])

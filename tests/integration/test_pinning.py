"""Pinning the default version through the admin API, and the token that guards it."""

from __future__ import annotations

import httpx

from tests.integration.conftest import ControllerHandle, register_echo, serve_status, wait_for


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

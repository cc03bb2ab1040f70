"""Hostile bodies against the real serving replica, through HAProxy: refused within a bound,
the replica still answering after."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.integration.conftest import ControllerHandle, register_echo, serve_status, wait_for

pytestmark = pytest.mark.integration


def test_huge_bodies_and_record_counts_are_refused_and_the_replica_stays_up(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "hostile_echo"
    register_echo(name, tag="one")
    wait_for(lambda: serve_status(serving_url, name).status_code == 200)
    url = f"{serving_url}/models/{name}/serve"
    with httpx.Client(timeout=60) as client:
        started = time.monotonic()
        ten_mib = b'{"prompt": "' + b"x" * (10 * 1024 * 1024) + b'"}'
        # Under the 16 MiB default: a body this large is read, validated and answered.
        assert client.post(url, content=ten_mib).status_code == 200
        seventeen_mib = b'{"prompt": "' + b"x" * (17 * 1024 * 1024) + b'"}'
        too_large = client.post(url, content=seventeen_mib)
        assert too_large.status_code == 413
        assert too_large.headers["content-type"].startswith("application/problem+json")

        records = json.dumps([{"prompt": "x"}] * 100_000).encode()
        too_many = client.post(url, content=records)
        assert too_many.status_code == 422
        assert too_many.json()["errors"][0] == {
            "field": "body",
            "reason": "holds 100000 records; a request may hold at most 10000",
        }
        deep = client.post(url, content=b"[" * 100_000 + b"]" * 100_000)
        assert deep.status_code == 422 and "nested too deeply" in deep.json()["detail"]
        elapsed = time.monotonic() - started
        assert elapsed < 30, f"hostile bodies took {elapsed:.1f}s to refuse"

        # The replica is still up and answering.
        ok = client.post(url, json={"prompt": "still here"})
        assert ok.status_code == 200 and ok.json() == [{"answer": "one:still here"}]


def _count(metrics: str, result: str) -> float:
    line = f'sigserve_load_failure_reports_total{{result="{result}"}} '
    # A label value is exported once counted (or once declared at 0, controller/metrics.py).
    return float(next((x for x in metrics.splitlines() if x.startswith(line)), "0").split()[-1])


def test_a_forged_report_leaves_the_default_serving_and_a_flood_of_them_is_refused(
    serving_url: str, ctl: ControllerHandle
) -> None:
    # Model code in a replica can read the serving token (docs/security.md, "One replica is
    # one trust domain"): what it can send with it must not take an endpoint out.
    name = "forged_reports"
    register_echo(name, tag="one")
    wait_for(lambda: serve_status(serving_url, name).status_code == 200, 60)
    digest = ctl.model(name)["versions"][0]["mlmodel_digest"]
    serving = {"Authorization": f"Bearer {ctl.secrets.serving_token}"}
    url = f"{ctl.url}/serving/load-failures"
    forged = {"model": name, "version": "1", "mlmodel_digest": digest, "kind": "load-failed",
              "cause": "UnpicklingError: forged", "replica": "forged-1"}  # fmt: skip
    before = httpx.get(f"{ctl.url}/metrics", timeout=10).text
    answer = httpx.post(url, json=forged, headers=serving, timeout=30)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["recorded"], answer.json()["state"]) == (True, "live")

    # The operator sees it; serving takes the table and the default keeps answering.
    v1 = ctl.model(name)["versions"][0]
    assert v1["state"] == "live" and v1["load_failure"]["replica"] == "forged-1"
    assert "forged" in v1["warnings"][0] and "stays live" in v1["warnings"][0]

    def warned() -> bool:
        listed = httpx.get(f"{serving_url}/models/{name}", timeout=10).json()
        return any("forged" in w for w in listed["versions"][0]["warnings"])

    wait_for(warned, 30)
    ok = serve_status(serving_url, name)
    assert ok.status_code == 200 and ok.json() == [{"answer": "one:hi"}]

    # 1,000 reports claiming one replica: past its budget each is a 429, and none decides.
    events = f"{ctl.url}/admin/models/{name}/events"
    seen = len(httpx.get(events, headers=ctl.admin, timeout=10).json()["events"])
    flood = {**forged, "replica": "flood"}
    started = time.monotonic()
    with httpx.Client(timeout=30, headers=serving) as client:
        answers = [client.post(url, json=flood) for _ in range(1000)]
    took = time.monotonic() - started
    statuses = [a.status_code for a in answers]
    # Its budget at once, and what refilled (24 a minute) while the flood went on.
    taken = statuses.count(200)
    assert 1 <= taken <= 20 + took * 24 / 60 + 1, (taken, took)
    assert statuses.count(429) == 1000 - taken
    refused = answers[-1]
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert int(refused.headers["retry-after"]) >= 1 and "flood" in refused.json()["detail"]
    after = httpx.get(f"{ctl.url}/metrics", timeout=10).text
    assert _count(after, "limited") - _count(before, "limited") == 1000 - taken
    assert _count(after, "default_live") - _count(before, "default_live") == 1
    assert len(httpx.get(events, headers=ctl.admin, timeout=10).json()["events"]) == seen
    assert ctl.state_of(name, "1") == "live"
    assert serve_status(serving_url, name).status_code == 200

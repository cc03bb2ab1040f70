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

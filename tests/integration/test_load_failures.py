"""A version whose artifact cannot be loaded is reported by the replica that tried (its proof,
before the first request), and the controller quarantines it: clients get 503 while it is
proven and then the 409 with the cause as the reason, and a release by hand lets serving try
again."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.integration.broken_artifacts import register_broken_pickle
from tests.integration.conftest import (
    ControllerHandle,
    loads_of,
    problem,
    register_echo,
    serve_status,
    wait_for,
)

NAME = "reported_broken"


def reasons(ctl: ControllerHandle, version: str) -> list[str]:
    return next(v["reasons"] for v in ctl.model(NAME)["versions"] if v["version"] == version)


def test_a_version_that_cannot_load_is_reported_and_quarantined_with_its_cause(
    home: Path, serving_url: str, ctl: ControllerHandle
) -> None:
    assert register_echo(NAME, tag="one") == "1"
    wait_for(lambda: ctl.state_of(NAME, "1") == "live", 60)
    failed_at = time.monotonic()
    assert register_broken_pickle(home, NAME, keep=lambda size: size // 2) == "2"
    # The controller checks what it can read, not whether the pickle loads: the replica's
    # proof loads it, and its load-failure report quarantines it before any client could call
    # it (clients get 404 or 503 meanwhile, never a 200).
    statuses: list[int] = []

    def decided() -> bool:
        statuses.append(serve_status(serving_url, NAME, "2").status_code)
        return ctl.state_of(NAME, "2") == "quarantined"

    wait_for(decided, 30, 0.05)
    # Never 200; 409 only on the poll made once the controller had decided.
    assert set(statuses[:-1]) <= {404, 503} and statuses[-1] in (404, 409, 503), statuses
    why = reasons(ctl, "2")[0]
    assert why.startswith("serving could not load its artifact (replica "), why
    assert "UnpicklingError" in why and "release it to try again" in why

    def refused() -> bool:
        return serve_status(serving_url, NAME, "2").status_code == 409

    wait_for(refused, 30, 0.05)
    took = time.monotonic() - failed_at
    assert took < 30
    answer = serve_status(serving_url, NAME, "2")
    assert any("UnpicklingError" in r for r in problem(answer)["reasons"]), answer.text
    tries = len(loads_of(NAME, "2"))
    for _ in range(5):
        assert serve_status(serving_url, NAME, "2").status_code == 409
    assert len(loads_of(NAME, "2")) == tries  # a 409 is answered from the table: no load
    ok = serve_status(serving_url, NAME, "1")
    assert ok.status_code == 200 and ok.json() == [{"answer": "one:hi"}]
    events = httpx.get(f"{ctl.url}/admin/models/{NAME}/events", headers=ctl.admin, timeout=10)
    loaded = [e for e in events.json()["events"] if e["kind"] == "load"]
    assert loaded and loaded[0]["actor"].startswith("serving:"), loaded
    assert loaded[0]["after"]["kind"] == "load-failed"

    # Released, serving tries again; the pickle is still broken, so it is quarantined again.
    released = httpx.post(
        f"{ctl.url}/admin/models/{NAME}/versions/2/release",
        json={"reason": "try the new serving image"}, headers=ctl.admin, timeout=30,
    )  # fmt: skip
    assert released.status_code == 200, released.text
    # Pending, to be proven again: the replica's memory of the failure holds it for 5 s, then
    # its proof loads it again.
    assert ctl.state_of(NAME, "2") == "pending"
    wait_for(lambda: serve_status(serving_url, NAME, "2").status_code != 409, 30, 0.05)
    wait_for(refused, 30, 0.2)
    assert ctl.state_of(NAME, "2") == "quarantined"
    assert len(loads_of(NAME, "2")) > tries

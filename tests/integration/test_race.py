"""A client asking for a version from before it exists never gets a 200 from a bad version."""

from __future__ import annotations

import threading
import time

import httpx

from tests.integration.conftest import ControllerHandle, register_echo, wait_for


def _hammer(url: str, stop: threading.Event, seen: list[tuple[int, str]]) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            try:
                r = client.post(url, json={"prompt": "hi"})
            except httpx.HTTPError as exc:  # seen as a failure, not as a thread that died
                seen.append((0, f"{type(exc).__name__}: {exc}"))
            else:
                seen.append((r.status_code, r.text[:200]))
            time.sleep(0.005)


def test_incompatible_version_goes_from_404_to_409_never_200(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "race_echo"
    register_echo(name, tag="base")
    wait_for(lambda: ctl.state_of(name, "1") == "live")
    url = f"{serving_url}/models/{name}/versions/2/serve"
    seen: list[tuple[int, str]] = []
    stop = threading.Event()
    client = threading.Thread(target=_hammer, args=(url, stop, seen))
    client.start()
    try:
        wait_for(lambda: len(seen) > 5, 10)
        # Breaking for the contract's clients (its output "answer" is gone), yet it reads the
        # body they send: served by mistake, it would answer them 200. A version that cannot
        # read that body (a renamed input) would fail with a 4xx/5xx even if it were served,
        # so "never 200" could not fail.
        register_echo(name, tag="renamed", output_label="reply")
        wait_for(lambda: any(status == 409 for status, _ in seen), 10, 0.01)
        time.sleep(0.3)
    finally:
        stop.set()
        client.join()
    statuses = [status for status, _ in seen]
    assert [answer for status, answer in seen if status == 200] == []
    assert statuses[0] == 404 and statuses[-1] == 409
    first_409 = statuses.index(409)
    # Once refused, refused for good: no flapping back to 404 or on to anything else.
    assert set(statuses[first_409:]) == {409}
    assert set(statuses[:first_409]) <= {404, 503}, seen[:first_409]
    # The probe could have seen a wrong 200: released by hand, the same request gets one.
    released = httpx.post(
        f"{ctl.url}/admin/models/{name}/versions/2/release",
        json={"reason": "test: show that this version answers the probe"},
        headers=ctl.admin,
        timeout=30,
    )
    assert released.status_code == 200, released.text
    answer = wait_for(
        lambda: (r := httpx.post(url, json={"prompt": "hi"})).status_code == 200 and r, 30, 0.05
    )
    assert answer.json() == [{"reply": "renamed:hi"}]


def test_compatible_version_goes_from_404_to_200(serving_url: str, ctl: ControllerHandle) -> None:
    name = "race_ok"
    register_echo(name, tag="base")
    wait_for(lambda: ctl.state_of(name, "1") == "live")
    url = f"{serving_url}/models/{name}/versions/2/serve"
    assert httpx.post(url, json={"prompt": "hi"}).status_code == 404
    register_echo(name, tag="second")
    r = wait_for(
        lambda: (resp := httpx.post(url, json={"prompt": "hi"})).status_code == 200 and resp,
        10,
        0.01,
    )
    assert r.json() == [{"answer": "second:hi"}]

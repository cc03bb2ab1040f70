"""A client asking for a version from before it exists never gets a 200 from a bad version."""

from __future__ import annotations

import threading
import time

import httpx

from tests.integration.conftest import ControllerHandle, register_echo, wait_for


def _hammer(url: str, stop: threading.Event, seen: list[int]) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            seen.append(client.post(url, json={"prompt": "hi"}).status_code)
            time.sleep(0.005)


def test_incompatible_version_goes_from_404_to_409_never_200(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "race_echo"
    register_echo(name, tag="base")
    wait_for(lambda: ctl.state_of(name, "1") == "live")
    seen: list[int] = []
    stop = threading.Event()
    client = threading.Thread(
        target=_hammer,
        args=(f"{serving_url}/models/{name}/versions/2/serve", stop, seen),
    )
    client.start()
    try:
        wait_for(lambda: len(seen) > 5, 10)
        register_echo(name, tag="renamed", input_label="text")
        wait_for(lambda: 409 in seen, 10, 0.01)
        time.sleep(0.3)
    finally:
        stop.set()
        client.join()
    assert 200 not in seen
    assert seen[0] == 404 and seen[-1] == 409
    first_409 = seen.index(409)
    # Once refused, refused for good: no flapping back to 404 or on to anything else.
    assert set(seen[first_409:]) == {409}
    assert set(seen[:first_409]) <= {404, 503}


def test_compatible_version_goes_from_404_to_200(serving_url: str, ctl: ControllerHandle) -> None:
    name = "race_ok"
    register_echo(name, tag="base")
    wait_for(lambda: ctl.state_of(name, "1") == "live")
    url = f"{serving_url}/models/{name}/versions/2/serve"
    assert httpx.post(url, json={"prompt": "hi"}).status_code == 404
    register_echo(name, tag="second")
    r = wait_for(lambda: (resp := httpx.post(url, json={"prompt": "hi"})).status_code == 200
                 and resp, 10, 0.01)
    assert r.json() == [{"answer": "second:hi"}]

"""Routing-table polls held open are capped (``controller.long_poll``; docs/security.md, "How
many polls are held"): past the cap a poll is answered 503 at once, and ``/healthz`` answers.

On real HTTP (uvicorn on a free port), since what the cap protects is the server's sockets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from controller.app import create_app
from controller.database import make_engine, migrate
from controller.services import Services
from controller.settings import ControllerSettings
from controller.store import Store
from sigserve.ports import free_port

SERVING_TOKEN = "serving-token-0123456789"
SERVING = {"Authorization": f"Bearer {SERVING_TOKEN}"}
CAP = 2
HELD_S = 2.0


class CappedSettings(ControllerSettings):
    # The field controller/settings.py gets (issue 16); declared here too so the test does not
    # depend on it being there yet. The controller reads it with a default when absent.
    long_poll_max_concurrent: int = CAP


def wait_until(predicate: Callable[[], Any], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s}s")
        time.sleep(0.01)


@pytest.fixture()
def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Services]]:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = CappedSettings(
        home=tmp_path,
        admin_token=SecretStr("admin-token-0123456789"),
        webhook_secret=SecretStr("hook-secret-0123456789"),
        serving_token=SecretStr(SERVING_TOKEN),
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        resync_interval_s=3600,
    )
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    Store(engine).publish()
    engine.dispose()
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                       timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, name="controller-under-test")
    thread.start()
    try:
        wait_until(lambda: server.started)
        yield f"http://127.0.0.1:{port}", app.state.services
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_past_the_cap_a_poll_is_answered_503_at_once_and_healthz_still_answers(
    running: tuple[str, Services],
) -> None:
    url, svc = running
    with httpx.Client(base_url=url, headers=SERVING, timeout=30) as http:
        table = http.get("/routing-table", params={"after": -1}).json()
        current = {"after": table["revision"], "epoch": table["epoch"], "timeout": HELD_S}
        with ThreadPoolExecutor(CAP) as pool:
            held: list[Future[httpx.Response]] = [
                pool.submit(http.get, "/routing-table", params=current) for _ in range(CAP)
            ]
            wait_until(svc.long_poll_slots.locked)

            started = time.monotonic()
            extra = http.get("/routing-table", params=current)
            extra_s = time.monotonic() - started
            assert extra.status_code == 503, extra.text
            assert extra_s < 1.0, f"the extra poll took {extra_s:.2f}s: it was held"
            assert extra.headers["content-type"] == "application/problem+json"
            assert extra.headers["retry-after"] == "2"
            assert extra.json()["type"] == "urn:sigserve:problem:too-many-polls"

            healthz = http.get("/healthz", timeout=1.0)
            assert healthz.status_code == 200
            # A replica with a table to take holds nothing: it is answered whatever the count.
            assert http.get("/routing-table", params={"after": -1}).status_code == 200
            assert [f.result().status_code for f in held] == [204] * CAP

        # The slots are given back: a poll is held again (204 after its timeout, not 503).
        again = http.get("/routing-table", params={**current, "timeout": 0.2})
        assert again.status_code == 204

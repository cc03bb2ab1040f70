"""Who may call ``GET /routing-table`` (docs/security.md, "The routing-table long-poll"), and
the signature every table answered carries ("The routing table's signature").

With ``SIGSERVE_ROUTING_TABLE_NEEDS_TOKEN`` (on by default) only a caller with the serving
token gets a table; anyone else 401 problem+json at once (not a poll held open). Turned off, the
table is open and only the catch-up needs the token (tests/unit/test_controller_long_poll_bound.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from controller.app import create_app
from controller.database import make_engine, migrate
from controller.settings import ControllerSettings
from controller.store import Store
from sigserve.ports import free_port
from wire.table_signature import SIGNATURE_HEADER, canonical_json, sign, table_key

SERVING_TOKEN = "serving-token-0123456789"
SERVING = {"Authorization": f"Bearer {SERVING_TOKEN}"}

Start = Callable[..., AbstractContextManager[TestClient]]


@pytest.fixture()
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Start:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

    @contextmanager
    def start(**overrides: Any) -> Iterator[TestClient]:
        settings = ControllerSettings(
            home=tmp_path,
            admin_token=SecretStr("admin-token-0123456789"),
            webhook_secret=SecretStr("hook-secret-0123456789"),
            mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",  # nothing listens there
            resync_interval_s=3600,
            **overrides,
        )
        engine = make_engine(settings.resolved_database_url())
        migrate(engine)
        Store(engine).publish()
        engine.dispose()
        with TestClient(create_app(settings)) as c:
            yield c

    return start


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer admin-token-0123456789"},
     {"Authorization": SERVING_TOKEN}],
    ids=["none", "wrong", "admin-token", "no-scheme"],
)
def test_without_the_serving_token_a_poll_is_refused_at_once(
    controller: Start, headers: dict[str, str]
) -> None:
    with controller(serving_token=SecretStr(SERVING_TOKEN),
                    routing_table_needs_token=True) as client:
        r = client.get("/routing-table", params={"after": 0, "timeout": 30}, headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["type"] == "urn:sigserve:problem:unauthorized"
        assert "source" not in r.text
        ok = client.get("/routing-table", params={"after": 0}, headers=SERVING)
        assert ok.status_code == 200 and ok.json()["revision"] == 1


def test_a_controller_that_needs_a_token_it_has_not_got_refuses_every_poll_and_says_why(
    controller: Start, caplog: pytest.LogCaptureFixture
) -> None:
    with controller(routing_table_needs_token=True) as client, caplog.at_level(logging.ERROR):
        for headers in [{}, SERVING]:
            assert client.get("/routing-table", headers=headers).status_code == 401
    said = [r.getMessage() for r in caplog.records if r.name == "controller.long_poll"]
    assert len(said) == 1 and "no SIGSERVE_SERVING_TOKEN" in said[0]


def test_turned_off_the_table_is_open_to_a_caller_without_the_token(controller: Start) -> None:
    with controller(serving_token=SecretStr(SERVING_TOKEN),
                    routing_table_needs_token=False) as client:
        r = client.get("/routing-table", params={"after": 0})
        assert r.status_code == 200 and r.json()["revision"] == 1


def test_by_default_a_poll_without_the_serving_token_is_refused(
    controller: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIGSERVE_ROUTING_TABLE_NEEDS_TOKEN", raising=False)
    with controller(serving_token=SecretStr(SERVING_TOKEN)) as client:
        assert client.get("/routing-table", params={"after": 0}).status_code == 401
        assert client.get("/routing-table", headers=SERVING).status_code == 200


def test_every_table_answered_is_signed_with_the_key_of_the_serving_token(
    controller: Start,
) -> None:
    with controller(serving_token=SecretStr(SERVING_TOKEN)) as client:
        r = client.get("/routing-table", params={"after": 0}, headers=SERVING)
    assert r.status_code == 200 and r.json()["revision"] == 1  # the body is still the table
    canonical = canonical_json(r.json())
    signature = r.headers[SIGNATURE_HEADER]
    assert signature == sign(canonical, table_key(SERVING_TOKEN))
    assert signature != sign(canonical, table_key("another-token"))
    assert SERVING_TOKEN not in r.text and SERVING_TOKEN not in signature


def test_a_controller_without_a_serving_token_answers_unsigned_tables(controller: Start) -> None:
    # Which replicas refuse (tests/unit/test_serving_table_auth.py): nobody can sign for it.
    with controller(routing_table_needs_token=False) as client:
        r = client.get("/routing-table", params={"after": 0})
    assert r.status_code == 200 and SIGNATURE_HEADER not in r.headers

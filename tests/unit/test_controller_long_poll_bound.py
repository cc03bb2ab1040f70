"""The long-poll's catch-up at the edges of its bounds, on SQLite and on PostgreSQL.

A replica that asks after a later revision of this controller's epoch than the database holds
makes the controller catch up above it (``Store.catch_up``: the database was restored from a
backup). That claim is believed only from a caller with the serving token, moves the revision
at most ``MAX_JUMP`` per catch-up and never past ``CEILING``, and is logged as the alarm it is.
These tests stand at those edges as a replica (or anyone else) would, and then publish once
more, as the next decision does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from controller.app import create_app
from controller.database import make_engine, migrate
from controller.records import ModelRecord, VersionRecord
from controller.settings import ControllerSettings
from controller.store import Store
from sigserve.ports import free_port

MAX_JUMP = 1_000_000  # how far one catch-up may move the revision (docs/security.md)
CEILING = 2**62  # no catch-up goes past it: 2**62 publishes still fit in the BIGINT column
COLUMN_MAX = 2**63 - 1  # the largest revision the table_revision column holds
OLD_COLUMN_MAX = 2**31 - 1  # what one unauthenticated poll pushed an INTEGER column to
TOKEN = "admin-token-of-the-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SERVING_TOKEN = "serving-token-of-the-tests"
SERVING = {"Authorization": f"Bearer {SERVING_TOKEN}"}
SIG = {"inputs": json.dumps([{"type": "string", "name": "p", "required": True}]),
       "outputs": None, "params": None}

Controller = Callable[[int], AbstractContextManager[TestClient]]


@pytest.fixture()
def controller(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Controller:
    """Starts a controller on a database that published model ``m`` (v1 live) as revision
    ``revision`` (set in the row, as a restored or an older database would hold it)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = ControllerSettings(
        home=tmp_path,
        database_url=database_url,
        admin_token=SecretStr(TOKEN),
        serving_token=SecretStr(SERVING_TOKEN),
        routing_table_needs_token=False,  # an anonymous claim is what some tests send
        webhook_secret=SecretStr("hook-secret-of-the-tests"),
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        resync_interval_s=3600,
    )

    @contextmanager
    def start(revision: int) -> Iterator[TestClient]:
        engine = make_engine(database_url)
        migrate(engine)
        store = Store(engine)
        store.update_model("m", lambda _: ModelRecord(
            name="m", policy="backward", default_version="1", contract=SIG,
            versions={"1": VersionRecord(version="1", signature=SIG, signature_read=True,
                                         mlmodel_digest="d" * 64, artifact_uri="x")}))
        store.publish()
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE table_revision SET revision = :r"),
                               {"r": revision})
        engine.dispose()
        with TestClient(create_app(settings)) as c:
            yield c

    return start


@pytest.fixture()
def client(controller: Controller) -> Iterator[TestClient]:
    with controller(1) as c:
        yield c


def poll(
    client: TestClient, after: int, epoch: str, timeout: float = 0.0,
    headers: dict[str, str] | None = None,
) -> Any:
    """The answer to a replica's long-poll (an httpx2 response: starlette's client's own)."""
    return client.get("/routing-table", headers=SERVING if headers is None else headers,
                      params={"after": after, "epoch": epoch, "timeout": timeout})


def current(client: TestClient) -> dict[str, Any]:
    r = client.get("/routing-table", params={"after": -1}, headers=SERVING)
    assert r.status_code == 200, r.text
    table: dict[str, Any] = r.json()
    return table


def quarantine(client: TestClient) -> dict[str, Any]:
    """The next decision: version 1 quarantined by hand, and the table it publishes."""
    r = client.post("/admin/models/m/versions/1/quarantine", json={"reason": "canary"},
                    headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["published"] is True
    table = current(client)
    assert table["models"]["m"]["versions"]["1"]["state"] == "quarantined"
    return table


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, ADMIN],
    ids=["no-token", "wrong-token", "admin-token"],
)
def test_a_claim_without_the_serving_token_moves_nothing(
    client: TestClient, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's freeze: one GET with a claimed revision wrote 2**31 - 1, and replicas could
    take no later table. Now it writes nothing, and the next decision reaches replicas."""
    mine = current(client)
    r = poll(client, OLD_COLUMN_MAX - 1, mine["epoch"], timeout=0.2, headers=headers)
    assert r.status_code == 204, r.text
    assert current(client)["revision"] == mine["revision"] == 1
    assert "catch_up" not in [getattr(rec, "event", None) for rec in caplog.records]
    # A replica holding revision 1 gets the next decision, as revision 2.
    waiting = poll(client, 1, mine["epoch"])
    assert waiting.status_code == 204
    assert quarantine(client)["revision"] == 2
    assert poll(client, 1, mine["epoch"]).json()["revision"] == 2


def test_a_replica_with_the_token_is_caught_up_to_the_edge_of_the_jump(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    epoch = current(client)["epoch"]
    seen = 1 + MAX_JUMP - 1  # its catch-up, seen + 1, is exactly the most one may move
    with caplog.at_level(logging.WARNING, logger="controller.long_poll"):
        r = poll(client, seen, epoch, timeout=5)
    assert r.status_code == 200, r.text
    assert (r.json()["revision"], r.json()["epoch"]) == (seen + 1, epoch)
    alarms = [rec for rec in caplog.records if getattr(rec, "event", None) == "catch_up"]
    assert [(a.levelno, a.seen, a.revision) for a in alarms] == [  # type: ignore[attr-defined]
        (logging.WARNING, seen, seen + 1)
    ]
    # The replica holds it and polls on; the next decision is the revision after it.
    assert poll(client, seen + 1, epoch, timeout=0.2).status_code == 204
    assert quarantine(client)["revision"] == seen + 2


def test_a_jump_past_the_bound_is_cut_to_it_and_the_next_polls_move_it_on(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    epoch = current(client)["epoch"]
    seen = 1 + MAX_JUMP + 5  # further ahead than one catch-up may move
    with caplog.at_level(logging.WARNING, logger="controller.long_poll"):
        first = poll(client, seen, epoch, timeout=0.2)
    # Published one jump up; not newer than what the replica holds, so it waits on.
    assert first.status_code == 204
    assert current(client)["revision"] == 1 + MAX_JUMP
    assert "at most 1,000,000" in caplog.text
    second = poll(client, seen, epoch, timeout=5)
    assert second.status_code == 200, second.text
    assert second.json()["revision"] == seen + 1


def test_no_catch_up_passes_the_ceiling_and_publishing_goes_on_above_it(
    controller: Controller,
) -> None:
    with controller(CEILING - 10) as client:
        epoch = current(client)["epoch"]
        r = poll(client, CEILING + 5, epoch, timeout=0.2)
        assert r.status_code == 204
        assert current(client)["revision"] == CEILING
        assert quarantine(client)["revision"] == CEILING + 1


def test_a_replica_holding_the_column_max_keeps_polling(controller: Controller) -> None:
    """A database that held its column's top (an INTEGER one's, which one unauthenticated
    poll reached before this was mended): replicas poll after it, and are answered."""
    with controller(OLD_COLUMN_MAX) as client:
        epoch = current(client)["epoch"]
        r = poll(client, OLD_COLUMN_MAX, epoch, timeout=0.2)
        assert r.status_code == 204, r.text
        assert poll(client, COLUMN_MAX, "an-older-database").json()["epoch"] == epoch


def test_a_decision_on_a_database_at_the_old_column_max_is_published(
    controller: Controller,
) -> None:
    """On PostgreSQL the INTEGER column refused the publish after 2**31 - 1: no quarantine,
    pin or new version reached serving again."""
    with controller(OLD_COLUMN_MAX) as client:
        assert quarantine(client)["revision"] == OLD_COLUMN_MAX + 1


def test_after_past_the_old_bound_in_another_epoch_gets_this_table_at_once(
    client: TestClient,
) -> None:
    mine = current(client)
    r = poll(client, OLD_COLUMN_MAX, "an-older-database", timeout=5)
    assert r.status_code == 200, r.text
    assert (r.json()["epoch"], r.json()["revision"]) == (mine["epoch"], mine["revision"])
    assert current(client)["revision"] == mine["revision"]  # another epoch's count: no catch-up


def test_after_past_any_revision_the_column_holds_is_refused_naming_after(
    client: TestClient,
) -> None:
    r = poll(client, COLUMN_MAX + 1, str(current(client)["epoch"]))
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in r.json()["errors"]] == ["after"]

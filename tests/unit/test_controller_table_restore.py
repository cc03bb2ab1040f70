"""A database restored from a backup under a running controller (same epoch, counting again
from a lower revision): what this controller publishes next is above every revision it
answered before, and the long-poll never takes a revision's table with other content."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from controller.app import create_app
from controller.broadcaster import TableBroadcaster
from controller.database import make_engine, migrate
from controller.records import ModelRecord, VersionRecord
from controller.settings import ControllerSettings
from controller.store import Store
from controller.table_builder import build_table
from sigserve.ports import free_port
from wire.routing_table import RoutingTable, VersionState

LIVE, QUARANTINED = VersionState.LIVE, VersionState.QUARANTINED


def _model(name: str, state: VersionState = LIVE) -> ModelRecord:
    return ModelRecord(
        name=name, policy="auto", default_version="1",
        versions={"1": VersionRecord(version="1", state=state, reasons=[state.value],
                                     decided_at=datetime(2026, 1, 1, tzinfo=UTC))},
    )  # fmt: skip


def _put(store: Store, name: str, state: VersionState = LIVE) -> None:
    store.update_model(name, lambda _: _model(name, state))


def _copy(source: Path, target: Path) -> None:
    """SQLite's online backup: what ``.backup`` and ``.restore`` do, under open connections."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def test_a_publish_after_a_restore_is_above_every_revision_answered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live, backup = tmp_path / "c.db", tmp_path / "backup.db"
    engine = make_engine(f"sqlite:///{live}")
    migrate(engine)
    store = Store(engine)
    _put(store, "a")
    first = store.publish()
    _copy(live, backup)
    _put(store, "b")
    store.publish()
    _put(store, "c")
    held = store.publish()
    assert held.revision == first.revision + 2

    _copy(backup, live)  # the database goes back to ``first``, under the running controller
    assert store.published() == (first.epoch, first.revision)
    _put(store, "d")  # a decision made after the restore
    with caplog.at_level(logging.WARNING, "controller.store_tables"):
        after = store.publish()
    # Above what replicas hold (else they ignore it until the database counts past it).
    assert after.epoch == held.epoch and after.revision == held.revision + 1
    assert sorted(after.models) == ["a", "d"]
    assert store.published() == (after.epoch, after.revision)
    assert store.published_table() == after  # a follower loads it: the row records its digest
    assert any(getattr(r, "event", None) == "table_went_back" for r in caplog.records)
    # Counting goes on from there.
    _put(store, "e")
    assert store.publish().revision == after.revision + 1
    engine.dispose()


def test_a_catch_up_after_a_restore_is_above_every_revision_answered(tmp_path: Path) -> None:
    """A replica claiming a revision between the restored one and the held one: the catch-up
    must not land on a revision this controller answered with other content."""
    live, backup = tmp_path / "c.db", tmp_path / "backup.db"
    engine = make_engine(f"sqlite:///{live}")
    migrate(engine)
    store = Store(engine)
    _put(store, "a")
    first = store.publish()
    _copy(live, backup)
    for name in ("b", "c"):
        _put(store, name)
        held = store.publish()
    _copy(backup, live)
    caught = store.catch_up(first.revision + 1)
    assert caught.revision == held.revision + 1 and sorted(caught.models) == ["a"]
    assert store.publish() == caught
    engine.dispose()


def test_a_revision_published_again_with_other_content_is_published_above_it(
    tmp_path: Path,
) -> None:
    """Restored, then another controller (started since, so it never saw the lost revisions)
    counts up to the revision this one holds, with other decisions: this one's next publish
    must not answer that revision with the content it holds."""
    live, backup = tmp_path / "c.db", tmp_path / "backup.db"
    engine = make_engine(f"sqlite:///{live}")
    migrate(engine)
    mine = Store(engine)
    _put(mine, "a")
    first = mine.publish()
    _copy(live, backup)
    _put(mine, "b")
    held = mine.publish()
    _copy(backup, live)
    other = Store(engine)
    _put(other, "b", QUARANTINED)
    assert other.publish().revision == held.revision  # the same number, other content
    after = mine.publish()
    assert after.revision == held.revision + 1
    assert after.models["b"].versions["1"].state is QUARANTINED
    assert first.revision < held.revision
    engine.dispose()


def test_the_broadcaster_never_takes_a_revision_held_with_other_content() -> None:
    """The long-poll keeps each table's body by its revision: a table taken for "the revision
    held, rebuilt" must be that content, or replicas get the old body for the new table."""

    def table(state: VersionState) -> RoutingTable:
        return build_table([_model("a", state)], 3, "e")

    async def run() -> None:
        broadcaster = TableBroadcaster()
        held = table(LIVE)
        await broadcaster.offer(held)
        await broadcaster.offer(table(QUARANTINED))
        assert broadcaster.current is held
        rebuilt = table(LIVE)  # the same content in other objects: taken
        await broadcaster.offer(rebuilt)
        assert broadcaster.current is rebuilt

    asyncio.run(run())


def test_replicas_polling_from_the_revision_held_get_what_is_decided_after_a_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the controller's app and long-poll: a replica holds the controller's revision, so
    it is not ahead and no catch-up runs; the publish itself must go above it."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    token = "serving-token-0123456789"
    settings = ControllerSettings(
        home=tmp_path, admin_token=SecretStr("admin-token-0123456789"),
        webhook_secret=SecretStr("hook-secret-0123456789"),
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        resync_interval_s=3600, serving_token=SecretStr(token),
    )  # fmt: skip
    url = settings.resolved_database_url()
    live, backup = Path(url.removeprefix("sqlite:///")), tmp_path / "backup.db"
    engine = make_engine(url)
    migrate(engine)
    Store(engine).publish()
    engine.dispose()
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings)) as client:
        svc = client.app.state.services  # type: ignore[attr-defined]
        _put(svc.store, "a")
        assert client.portal.call(svc.publish)  # type: ignore[union-attr]
        _copy(live, backup)
        _put(svc.store, "b")
        assert client.portal.call(svc.publish)  # type: ignore[union-attr]
        held = svc.broadcaster.current
        assert held is not None
        _copy(backup, live)
        _put(svc.store, "c")  # decided after the restore
        assert client.portal.call(svc.publish)  # type: ignore[union-attr]
        params = {"after": held.revision, "epoch": held.epoch, "schema": 3}
        answer = client.get("/routing-table", params=params, headers=auth)
        assert answer.status_code == 200, answer.status_code
        table = RoutingTable.model_validate_json(answer.content)
        assert table.revision == held.revision + 1 and sorted(table.models) == ["a", "c"]


def test_a_publish_whose_commit_failed_is_not_taken_for_a_restore(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A commit that fails (SQLite busy past its timeout, a connection lost at COMMIT)
    answered nothing: the next publish is the next revision, with no restore warning."""
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    store = Store(engine)
    _put(store, "a")
    first = store.publish()
    _put(store, "b")

    def fail(session: Session) -> None:
        raise OperationalError("COMMIT", {}, Exception("database is locked"))

    event.listen(Session, "before_commit", fail)
    try:
        with pytest.raises(OperationalError):
            store.publish()
    finally:
        event.remove(Session, "before_commit", fail)
    caplog.set_level(logging.WARNING)
    again = store.publish()
    assert [r for r in caplog.records if getattr(r, "event", None) == "table_went_back"] == []
    assert again.revision == first.revision + 1
    assert "b" in again.models
    engine.dispose()

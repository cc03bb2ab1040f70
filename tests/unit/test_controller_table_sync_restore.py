"""A follower holding a revision above a restored database's (``controller.table_sync``): it
publishes the decisions above what it holds, rather than keep the old content until the database
counts past it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from controller.broadcaster import TableBroadcaster
from controller.database import make_engine, migrate
from controller.records import ModelRecord, VersionRecord
from controller.schema import TableRevisionRow
from controller.store import Store
from controller.table_sync import TableSync
from wire.routing_table import RoutingTable, VersionState


def _model(name: str) -> ModelRecord:
    state = VersionState.LIVE
    return ModelRecord(
        name=name, policy="auto", default_version="1",
        versions={"1": VersionRecord(version="1", state=state, reasons=[state.value],
                                     decided_at=datetime(2026, 1, 1, tzinfo=UTC))},
    )  # fmt: skip


def _put(store: Store, name: str) -> None:
    store.update_model(name, lambda _: _model(name))


def _copy(source: Path, target: Path) -> None:
    """SQLite's online backup (as in test_controller_table_restore)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


class _Follower:
    def __init__(self, engine: Engine) -> None:
        self.store = Store(engine)
        self.broadcaster = TableBroadcaster()
        self.sync = TableSync(self.store, self.broadcaster, poll_s=0.25)

    @property
    def held(self) -> RoutingTable:
        assert self.broadcaster.current is not None
        return self.broadcaster.current


def _restored(tmp_path: Path, followers: int = 1) -> tuple[Engine, Store, list[_Follower]]:
    """Followers that loaded revision 3 (a, b, c) of a database then restored to revision 1
    (a), on which a leader started since published d as revision 2: below what they hold, so a
    follower comparing revisions only would keep 3's content."""
    live, backup = tmp_path / "c.db", tmp_path / "backup.db"
    engine = make_engine(f"sqlite:///{live}")
    migrate(engine)
    leader = Store(engine)
    _put(leader, "a")
    leader.publish()
    _copy(live, backup)
    for name in ("b", "c"):
        _put(leader, name)
        leader.publish()
    loaded = [_Follower(engine) for _ in range(followers)]
    for follower in loaded:
        assert asyncio.run(follower.sync.refresh())
    _copy(backup, live)
    restarted = Store(engine)  # never answered 2..3: counts on from the restored row
    _put(restarted, "d")
    assert restarted.publish().revision == 2
    return engine, restarted, loaded


def test_a_follower_above_a_restored_database_publishes_above_what_it_holds(
    tmp_path: Path,
) -> None:
    engine, leader, (follower,) = _restored(tmp_path)
    held = follower.held
    assert held.revision == 3

    assert asyncio.run(follower.sync.refresh())
    table = follower.held
    assert table.epoch == held.epoch
    assert table.revision == 4 and sorted(table.models) == ["a", "d"]
    assert leader.published() == (held.epoch, 4)
    # The row records what revision 4 carries: another controller loads that very content.
    assert Store(engine).published_table() == table
    # Nothing went back since: the next tick is the one small query, nothing published.
    assert not asyncio.run(follower.sync.refresh())
    assert leader.published() == (held.epoch, 4)
    _put(leader, "e")  # the leader counts on from there, and the follower loads it
    assert leader.publish().revision == 5
    assert asyncio.run(follower.sync.refresh())
    assert sorted(follower.held.models) == ["a", "d", "e"]
    engine.dispose()


def test_two_followers_publishing_above_give_one_revision_one_content(tmp_path: Path) -> None:
    """Both saw the row below what they hold; the second publishes after the first committed
    (the row's lock orders them) and must answer the first's revision with the same content."""
    engine, _, (first, second) = _restored(tmp_path, followers=2)
    went_back = second.held
    assert asyncio.run(first.sync.refresh())
    # The second read the row before the first's publish, and publishes after it.
    asyncio.run(second.sync._publish_above(went_back))
    assert first.held.revision == second.held.revision == 4
    assert first.held.models == second.held.models
    assert second.store.published() == (went_back.epoch, 4)
    engine.dispose()


def test_a_store_that_never_answered_the_table_held_is_caught_up_above_it(
    tmp_path: Path,
) -> None:
    """The table held came from elsewhere than this store (it answered nothing): its publish
    would not know to go above it, the catch-up does."""
    engine, _, (follower,) = _restored(tmp_path)
    blank = _Follower(engine)
    asyncio.run(blank.broadcaster.offer(follower.held))
    assert asyncio.run(blank.sync.refresh())
    assert blank.held.revision == follower.held.revision + 1
    assert sorted(blank.held.models) == ["a", "d"]
    engine.dispose()


def test_followers_publishing_above_at_once_on_postgresql_give_one_revision_one_content(
    postgres_url: str,
) -> None:
    """Two followers see the row (restored: same epoch, a lower revision) below the revision
    both hold, and publish at the same moment: the revision row's lock orders them, and both
    end up answering one revision with one content, the one the row records."""
    engine = make_engine(postgres_url)
    migrate(engine)
    leader = Store(engine)
    for name in ("a", "b", "c"):
        _put(leader, name)
        leader.publish()
    pair = [_Follower(engine), _Follower(engine)]
    for follower in pair:
        assert asyncio.run(follower.sync.refresh())
    held = pair[0].held
    assert held.revision == 3
    with engine.begin() as connection:  # what a restore does to the row: back, same epoch
        connection.execute(
            update(TableRevisionRow).values(revision=2, digest="restored from a backup")
        )
    _put(leader, "d")  # decided since the backup, by a leader that wrote but not yet published

    barrier = threading.Barrier(2)

    def refresh(follower: _Follower) -> bool:
        barrier.wait()
        return asyncio.run(follower.sync.refresh())

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(refresh, pair)) == [True, True]
    one, two = (follower.held for follower in pair)
    assert one.revision == two.revision == 4
    assert one.models == two.models and sorted(one.models) == ["a", "b", "c", "d"]
    assert Store(engine).published_table() == one
    engine.dispose()


class ReadThenHeld(Store):
    """The real store; ``published`` answers once the test let it go (after reading the row)."""

    gate: threading.Event | None = None
    read: threading.Event | None = None

    def published(self) -> tuple[str, int] | None:
        row = super().published()
        if self.gate is not None and self.read is not None:
            self.read.set()
            assert self.gate.wait(10)
        return row


def test_a_publish_between_the_row_read_and_the_held_table_is_not_a_database_gone_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """This controller's own publish, committed and offered while a tick reads the row: the
    held table is then above the row just read, which is no database gone back."""
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    store = ReadThenHeld(engine)
    broadcaster = TableBroadcaster()
    sync = TableSync(store, broadcaster, poll_s=0.25)
    _put(store, "a")

    async def go() -> None:
        await broadcaster.offer(store.publish())
        _put(store, "b")  # a decision, about to be published by this controller
        store.read, store.gate = threading.Event(), threading.Event()
        tick = asyncio.create_task(sync.refresh())
        assert await asyncio.to_thread(store.read.wait, 10)  # the row read: revision 1
        store.read = None
        table = await asyncio.to_thread(store.publish)  # revision 2, as Publisher.publish does
        await broadcaster.offer(table)
        store.gate.set()
        await tick
        held = broadcaster.current
        assert held is not None
        assert held.revision == table.revision, "a revision more for nothing new"
        assert store.published() == (table.epoch, table.revision)

    caplog.set_level(logging.INFO)
    asyncio.run(go())
    assert not [r for r in caplog.records
                if getattr(r, "event", None) == "table_published_above"]
    engine.dispose()

"""The store on real databases made by the Alembic migrations: each test on SQLite and on
PostgreSQL (``database_url``, tests/conftest.py), and what two controllers sharing one
PostgreSQL do at once."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import OperationalError

from controller.database import is_migrated, make_engine, migrate
from controller.exceptions import GenerationConflict
from controller.records import ModelRecord, VersionRecord
from controller.store import Store
from controller.table_builder import content_digest
from wire.routing_table import RoutingTable, VersionState

SIG = {"inputs": json.dumps([{"type": "string", "name": "prompt", "required": True}]),
       "outputs": None, "params": None}


@pytest.fixture()
def store(database_url: str) -> Store:
    engine = make_engine(database_url)
    assert not is_migrated(engine)
    migrate(engine)
    migrate(engine)  # a no-op the second time
    assert is_migrated(engine)
    assert {"registered_models", "model_versions", "webhook_deliveries", "table_revision"} <= set(
        inspect(engine).get_table_names()
    )
    return Store(engine)


def put(store: Store, model: ModelRecord) -> None:
    store.update_model(model.name, lambda _: model)


def record(*versions: tuple[str, VersionState]) -> ModelRecord:
    return ModelRecord(
        name="m", policy="exact", default_version="1", contract=SIG,
        versions={v: VersionRecord(version=v, state=s, reasons=[f"why {v}"], signature=SIG,
                                   signature_read=True, decided_against="abc",
                                   decided_at=datetime(2026, 1, 1, tzinfo=UTC))
                  for v, s in versions},
    )


def test_saved_model_reads_back_equal(store: Store) -> None:
    saved = record(("1", VersionState.LIVE), ("2", VersionState.QUARANTINED))
    put(store, saved)
    loaded = store.load_model("m")
    assert loaded is not None
    assert loaded.versions["2"].reasons == ["why 2"]
    assert loaded.versions["2"].state is VersionState.QUARANTINED
    assert loaded.contract == SIG and loaded.default_version == "1"


def test_saving_drops_versions_the_record_lacks(store: Store) -> None:
    put(store, record(("1", VersionState.LIVE), ("2", VersionState.LIVE)))
    put(store, record(("1", VersionState.LIVE)))
    loaded = store.load_model("m")
    assert loaded is not None and set(loaded.versions) == {"1"}
    assert store.delete_model("m") and store.load_model("m") is None


def test_revision_moves_only_when_the_table_changes(store: Store) -> None:
    empty = store.publish()
    assert store.publish().revision == empty.revision
    put(store, record(("1", VersionState.LIVE)))
    changed = store.publish()
    assert changed.revision == empty.revision + 1
    assert changed.models["m"].versions["1"].state is VersionState.LIVE
    assert store.publish().revision == changed.revision


def test_a_write_from_an_older_read_is_refused_and_changes_nothing(store: Store) -> None:
    """The generation check (what keeps two leaders from undoing each other), on both
    backends: a record carries the generation it was read at and is written only if the row
    still has it."""
    assert store.update_model("m", lambda c: c) is None  # nothing stored: generation 0
    put(store, record(("1", VersionState.LIVE)))
    read = store.load_model("m")
    assert read is not None and read.generation == 1

    def add_v2(current: ModelRecord | None) -> ModelRecord:
        assert current is not None
        newer = record(("1", VersionState.LIVE), ("2", VersionState.LIVE))
        return replace(current, versions=newer.versions)

    written = store.update_model("m", add_v2, "resync")  # another writer, after ``read``
    assert written is not None and written.generation == 2
    events = len(store.events("m", limit=100))

    # A decision from the older read (it never saw version 2) must not drop version 2.
    stale = replace(read, default_version="1", versions=dict(read.versions))
    stale.versions["1"] = replace(stale.versions["1"], reasons=["decided from an old read"])
    with pytest.raises(GenerationConflict) as conflict:
        store.update_model("m", lambda _: stale, "resync")
    assert (conflict.value.read, conflict.value.stored) == (1, 2)
    after = store.load_model("m")
    assert after is not None and after.generation == 2 and set(after.versions) == {"1", "2"}
    assert after.versions["1"].reasons == ["why 1"]
    assert len(store.events("m", limit=100)) == events  # nothing audited either

    # The same decision made again from a fresh read goes in, one generation on.
    fresh = replace(after, versions=dict(after.versions))
    fresh.versions["1"] = replace(fresh.versions["1"], reasons=["decided from a fresh read"])
    written = store.update_model("m", lambda _: fresh, "resync")
    assert written is not None and written.generation == 3
    # An older read that finds nothing to change writes nothing, so it undoes nothing.
    assert store.update_model("m", lambda _: replace(fresh, generation=1)) is not None
    # A model read as not stored (0) is not created over one stored since.
    unstored = replace(record(("1", VersionState.LIVE)), name="n", generation=0)
    put(store, replace(unstored, generation=None))
    with pytest.raises(GenerationConflict):
        store.update_model("n", lambda _: replace(unstored, default_version=None))
    # Admin writes build on the row they are given: never refused.
    assert store.update_model("m", lambda c: replace(c, policy="none") if c else c) is not None


def test_deliveries_are_remembered_then_pruned(store: Store) -> None:
    assert store.record_delivery("d-1", "model_version.created")
    assert not store.record_delivery("d-1", "model_version.created")
    store.prune_deliveries(timedelta(seconds=-1))  # everything is older than "in a second"
    assert store.record_delivery("d-1", "model_version.created")


def test_a_new_database_is_a_new_epoch(new_database_url: Callable[[], str]) -> None:
    stores = []
    for _ in ("a", "b"):
        engine = make_engine(new_database_url())
        migrate(engine)
        stores.append(Store(engine))
    first, second = (s.publish() for s in stores)
    assert first.epoch and second.epoch and first.epoch != second.epoch
    assert stores[0].publish().epoch == first.epoch  # kept across publishes (and restarts)


def test_times_read_back_in_utc_whatever_the_servers_zone(database_url: str) -> None:
    engine = make_engine(database_url)
    if engine.dialect.name == "postgresql":
        # A server set up elsewhere answers timestamps in its own zone.
        with engine.begin() as connection:
            name = connection.execute(text("SELECT current_database()")).scalar_one()
            connection.execute(text(f'ALTER DATABASE "{name}" SET timezone TO \'Asia/Kolkata\''))
        engine.dispose()
    migrate(engine)
    store = Store(engine)
    put(store, record(("1", VersionState.LIVE)))
    loaded = store.load_model("m")
    assert loaded is not None
    decided_at = loaded.versions["1"].decided_at
    assert decided_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert decided_at is not None and decided_at.tzinfo is UTC


# Two controllers on one PostgreSQL: two engines and two stores, so neither store's in-process
# lock is shared and only the database's row locks keep them apart. (On SQLite a second
# writer process fails on a stale snapshot instead; one controller per SQLite database.)


def _race(*work: Callable[[], None]) -> None:
    start = threading.Barrier(len(work))
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            start.wait()
            job()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def _controllers(url: str, n: int = 2) -> list[Store]:
    engines = [make_engine(url) for _ in range(n)]
    migrate(engines[0])
    return [Store(e) for e in engines]


def _add_version(version: str) -> Callable[[ModelRecord | None], ModelRecord]:
    """Adds a version, and notes it on the model's first version: a write built on a stale
    read of the model would drop another controller's note."""

    def change(current: ModelRecord | None) -> ModelRecord:
        # Time between the read and the write for the other controller to write in.
        time.sleep(0.005)
        current = current or ModelRecord(
            name="m", policy="exact", versions={"1": VersionRecord(version="1")}
        )
        first = current.versions["1"]
        versions = dict(current.versions)
        versions["1"] = replace(first, warnings=[*first.warnings, f"seen {version}"])
        versions[version] = VersionRecord(version=version, state=VersionState.LIVE)
        return replace(current, versions=versions)

    return change


def test_two_controllers_on_postgresql_lose_no_decision(postgres_url: str) -> None:
    a, b = _controllers(postgres_url)
    mine = {a: [str(v) for v in range(100, 115)], b: [str(v) for v in range(200, 215)]}

    def decide(store: Store) -> Callable[[], None]:
        # Both start on a model neither has stored: no row to lock yet.
        return lambda: [store.update_model("m", _add_version(v), "resync") for v in mine[store]]

    _race(decide(a), decide(b))
    everything = sorted(mine[a] + mine[b])
    for store in (a, b):
        loaded = store.load_model("m")
        assert loaded is not None
        assert sorted(loaded.versions) == sorted(["1", *everything])
        assert sorted(loaded.versions["1"].warnings) == [f"seen {v}" for v in everything]
    # Each change audited once: the model stored once, each version decided once.
    events = a.events("m", limit=1000)
    assert Counter(e.kind for e in events) == {"model": 1, "decision": 31}


def test_two_controllers_on_postgresql_never_publish_one_revision_twice(
    postgres_url: str,
) -> None:
    a, b = _controllers(postgres_url)
    published: dict[Store, list[RoutingTable]] = {a: [], b: []}

    def decide_and_publish(store: Store, first: int) -> Callable[[], None]:
        def run() -> None:
            for v in range(first, first + 15):
                store.update_model("m", _add_version(str(v)))
                published[store].append(store.publish())

        return run

    # The first publish of each makes the database's first table: one epoch must win.
    _race(decide_and_publish(a, 100), decide_and_publish(b, 200))
    tables = published[a] + published[b]
    assert len({t.epoch for t in tables}) == 1
    content: dict[int, set[str]] = defaultdict(set)
    for t in tables:
        content[t.revision].add(content_digest(t))
    assert all(len(digests) == 1 for digests in content.values()), content
    for store in (a, b):
        revisions = [t.revision for t in published[store]]
        assert revisions == sorted(revisions)
    # A later revision never carries fewer decisions than an earlier one.
    sizes = [len(t.models["m"].versions) for t in sorted(tables, key=lambda t: t.revision)]
    assert sizes == sorted(sizes)
    last = a.publish()
    assert last.revision == max(content) and len(last.models["m"].versions) == 31


def test_two_controllers_starting_on_one_new_postgresql_database_share_one_epoch(
    postgres_url: str,
) -> None:
    stores = _controllers(postgres_url, 4)
    tables: list[RoutingTable] = []
    _race(*(lambda s=s: tables.append(s.publish()) for s in stores))
    assert len({(t.epoch, t.revision) for t in tables}) == 1


def test_a_write_behind_another_controllers_lock_fails_after_the_busy_timeout(
    postgres_url: str,
) -> None:
    holder = _controllers(postgres_url)[0]
    put(holder, record(("1", VersionState.LIVE)))
    waiter = Store(make_engine(postgres_url, busy_timeout_s=0.2))
    locked, release = threading.Event(), threading.Event()

    def hold(current: ModelRecord | None) -> ModelRecord | None:
        locked.set()
        release.wait(30)
        return current

    thread = threading.Thread(target=holder.update_model, args=("m", hold))
    thread.start()
    try:
        assert locked.wait(30)
        started = time.monotonic()
        with pytest.raises(OperationalError, match="lock timeout"):
            waiter.update_model("m", lambda c: None)  # would delete the model
        assert time.monotonic() - started < 5
    finally:
        release.set()
        thread.join(30)
    assert waiter.load_model("m") is not None  # nothing of the refused call was written


def test_every_record_field_has_its_column() -> None:
    """A field added to a record without its column (and migration) would be lost on write."""
    from controller.rows import MODEL_FIELDS, VERSION_FIELDS
    from controller.schema import ModelVersionRow, RegisteredModelRow

    model_columns = set(RegisteredModelRow.__table__.columns.keys())
    version_columns = set(ModelVersionRow.__table__.columns.keys())
    assert set(MODEL_FIELDS) - model_columns == set()
    assert set(VERSION_FIELDS) - version_columns == set()

"""Incremental publish (``controller/store_tables.py``): after any sequence of decisions, made by
this controller or another on the same database, the table published from the entries that
moved is the table, digest and revision a full rebuild gives."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import controller.store_tables as tables
from controller.database import make_engine, migrate
from controller.records import ModelRecord, VersionRecord
from controller.rollout_rows import rollouts_under_way
from controller.schema import TableRevisionRow
from controller.store import Store
from controller.store_tables import _Built, built_digest, built_json
from controller.table_builder import build_table, content_digest
from wire.routing_table import RoutingTable, VersionState

SIG = {"inputs": json.dumps([{"type": "string", "name": "prompt", "required": True}]),
       "outputs": None, "params": None}
NAMES = ["a", "b", "c", "d", "é"]

versions = st.dictionaries(
    st.sampled_from(["1", "2", "3", "10"]),
    st.tuples(st.sampled_from(list(VersionState)), st.text(max_size=8)),
    max_size=3,
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(NAMES), versions, st.booleans()),
        st.tuples(st.just("bury"), st.sampled_from(NAMES), st.just({}), st.booleans()),
        st.tuples(st.just("delete"), st.sampled_from(NAMES), st.just({}), st.booleans()),
        st.tuples(st.just("publish"), st.just(""), st.just({}), st.booleans()),
    ),
    max_size=12,
)


def model(name: str, found: dict[str, tuple[VersionState, str]]) -> ModelRecord:
    return ModelRecord(
        name=name, policy="backward", default_version=min(found, default=None), contract=SIG,
        versions={v: VersionRecord(version=v, state=s, reasons=[why], signature=SIG,
                                   signature_read=True,
                                   decided_at=datetime(2026, 1, 1, tzinfo=UTC))
                  for v, (s, why) in found.items()},
    )


def full(store: Store) -> RoutingTable:
    with store._transaction() as session:
        return build_table(store.all_models(), 0, "", rollouts_under_way(session))


@pytest.fixture()
def stores(tmp_path: Path) -> tuple[Store, Store]:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    return Store(engine), Store(engine)  # this controller's, and another's on the database


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=operations)
def test_an_incremental_publish_is_the_full_rebuild(
    stores: tuple[Store, Store], steps: list[tuple[str, str, dict[str, tuple[VersionState, str]],
                                                   bool]],
) -> None:
    mine, other = stores
    for op, name, found, by_other in steps:
        store = other if by_other else mine
        if op == "put":
            store.update_model(name, lambda _, n=name, f=found: model(n, f))
        elif op == "bury":
            store.update_model(
                name, lambda c: c and replace(c, versions={}, deleted_at=datetime.now(UTC))
            )
        elif op == "delete":
            store.delete_model(name)
        else:
            mine.publish()
    table = mine.publish()
    expected = full(mine)
    assert table.models == expected.models
    assert list(table.models) == list(expected.models)  # in the order a full build has
    published = mine.published()
    assert published is not None and table.revision == published[1]
    assert content_digest(table) == content_digest(expected)
    # The digest recorded is the full rebuild's: a full publish (or a follower's load) agrees,
    # and moves no revision.
    assert mine.published_table() == table
    assert other.publish(full=True) == table
    # A full build on the cache this process built keeps its equal entries: the same table.
    assert mine.publish(full=True) == table


def test_a_publish_reads_only_the_models_written_since_the_last(
    stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, other = stores
    for name in NAMES:
        mine.update_model(name, lambda _, n=name: model(n, {"1": (VersionState.LIVE, "")}))
    first = mine.publish()
    read: list[str] = []
    import controller.store_tables as tables

    def counted(row: object) -> ModelRecord:
        record = to_record(row)  # type: ignore[arg-type]
        read.append(record.name)
        return record

    to_record = tables.to_record
    monkeypatch.setattr(tables, "to_record", counted)
    other.update_model("c", lambda _: model("c", {"1": (VersionState.QUARANTINED, "no")}))
    second = mine.publish()
    assert read == ["c"]
    assert second.revision == first.revision + 1
    assert second.models["c"].versions["1"].state is VersionState.QUARANTINED
    assert mine.publish(full=True) == second  # nothing moved: no revision


def test_the_digest_fed_a_model_at_a_time_is_the_digest_of_the_whole_json() -> None:
    """The publish hashes the table a model at a time (no JSON of the whole table is made):
    the same digest as hashing ``built_json``, for none, one and several models."""
    for fragments in ({}, {"a": '"a": {"x": 1}'}, {"b": '"b": {}', "a": '"a": {"y": [1, 2]}'}):
        built = _Built(epoch="e-1", fragments=dict(fragments))
        assert built_digest(built) == hashlib.sha256(built_json(built).encode()).hexdigest()


def test_a_full_build_keeps_the_entries_it_made_equal(stores: tuple[Store, Store]) -> None:
    """The periodic full build (``full_every_s``) makes every entry again: those equal to the
    table built before are that table's objects (so the broadcaster holds one copy, and the heap
    does not grow by a second table at each full build); a model that changed is new."""
    mine, other = stores
    for name in NAMES:
        mine.update_model(name, lambda _, n=name: model(n, {"1": (VersionState.LIVE, "")}))
    first = mine.publish()
    other.update_model("c", lambda _: model("c", {"1": (VersionState.QUARANTINED, "no")}))
    rebuilt = mine.publish(full=True)
    assert rebuilt.revision == first.revision + 1
    assert rebuilt.models["c"] is not first.models["c"]
    assert rebuilt.models["c"].versions["1"].state is VersionState.QUARANTINED
    assert all(rebuilt.models[n] is first.models[n] for n in NAMES if n != "c")
    assert content_digest(rebuilt) == content_digest(full(mine))
    again = mine.publish(full=True)
    assert again.revision == rebuilt.revision
    assert all(again.models[n] is rebuilt.models[n] for n in NAMES)


def test_a_full_build_is_made_apart_from_the_write_lock(
    stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every decision's commit takes the store's write lock; a full build (8-9 s at 10,000 x 5,
    every ``full_every_s``) made under it held them all. A decision committed while the full
    build is made goes into the table that publish makes."""
    import controller.store_tables as tables

    mine, _ = stores
    for name in NAMES:
        mine.update_model(name, lambda _, n=name: model(n, {"1": (VersionState.LIVE, "")}))
    first = mine.publish()
    committed: list[bool] = []
    build = tables.build_table

    def deciding(*args: object, **kw: object) -> RoutingTable:
        if not committed:
            # A pass commits its decision from another thread while the build runs.
            def decide() -> None:
                quarantined = {"1": (VersionState.QUARANTINED, "no")}
                mine.update_model("c", lambda _: model("c", quarantined))
                committed.append(True)

            thread = threading.Thread(target=decide)
            thread.start()
            thread.join(5)
            assert committed, "the decision waited for the full build"
        return build(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(tables, "build_table", deciding)
    table = mine.publish(full=True)
    assert table.revision == first.revision + 1
    assert table.models["c"].versions["1"].state is VersionState.QUARANTINED
    assert table.models == full(mine).models
    assert all(table.models[n] is first.models[n] for n in NAMES if n != "c")


_SIG = {"inputs": json.dumps([{"type": "string", "name": "prompt", "required": True}]),
       "outputs": None, "params": None}


def _one_version(name: str, state: VersionState) -> ModelRecord:
    return ModelRecord(
        name=name, policy="backward", default_version="1", contract=_SIG,
        versions={"1": VersionRecord(version="1", state=state, reasons=[], signature=_SIG,
                                     signature_read=True)},
    )


class WatchedLock:
    """The store's write lock, saying when a second thread waits for it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.contended = threading.Event()

    def __enter__(self) -> WatchedLock:
        if not self._lock.acquire(blocking=False):
            self.contended.set()
            self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_a_full_build_apart_never_pairs_an_entry_with_another_entrys_json(
    tmp_path: Path,
) -> None:
    """A publish updates the cache in place (an entry, then its JSON): a full build made apart
    meanwhile must not keep the new entry with the old JSON, or the revision row records a
    digest that is not its table's and other controllers never load it."""
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    mine, other = Store(engine), Store(engine)  # the leader's, a follower's
    lock = WatchedLock()
    mine._write_lock = lock  # type: ignore[assignment]
    for name in ("a", "b", "c"):
        mine.update_model(name, lambda _, n=name: _one_version(n, VersionState.LIVE))
    mine.publish()
    # A decision committed (by anyone): the next incremental publish rebuilds "c".
    other.update_model("c", lambda _: _one_version("c", VersionState.QUARANTINED))

    publisher: list[threading.Thread] = []
    paused, go = threading.Event(), threading.Event()

    class PausingJson:
        @staticmethod
        def dumps(obj: Any, **kw: Any) -> str:
            if publisher and threading.current_thread() is publisher[0] and not go.is_set():
                paused.set()  # "c"'s new entry is in the cache, its JSON not yet
                go.wait(10)
            return json.dumps(obj, **kw)

    tables.json = PausingJson  # type: ignore[assignment]
    try:
        p = threading.Thread(target=mine.publish)
        publisher.append(p)
        p.start()
        assert paused.wait(10)
        # The periodic full build, made apart (a follower's load or another publish asking
        # for it while the publish above holds the lock).
        t = threading.Thread(target=mine._build_apart)
        t.start()
        assert lock.contended.wait(10)  # it read the cache and waits to put its build in
        go.set()
        p.join(10)
        t.join(10)
    finally:
        tables.json = json  # type: ignore[assignment]

    table = mine.publish()
    with mine._transaction() as session:
        row = session.get(TableRevisionRow, 1)
        assert row is not None
        recorded = row.digest
    assert table.models["c"].versions["1"].state is VersionState.QUARANTINED
    # The revision row must record the digest of the content it names.
    assert recorded == content_digest(table)
    # And a controller loading what the leader published takes it.
    assert other.published_table() == table

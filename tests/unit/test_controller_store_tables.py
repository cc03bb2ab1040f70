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

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.database import make_engine, migrate
from controller.records import ModelRecord, VersionRecord
from controller.rollout_rows import rollouts_under_way
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

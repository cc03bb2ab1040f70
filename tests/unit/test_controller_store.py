"""The store on a real SQLite database made by the Alembic migrations."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect

from controller.database import is_migrated, make_engine, migrate
from controller.records import ModelRecord, VersionRecord
from controller.store import Store
from sigserve.routing_table import VersionState

SIG = {"inputs": json.dumps([{"type": "string", "name": "prompt", "required": True}]),
       "outputs": None, "params": None}


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
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


def test_deliveries_are_remembered_then_pruned(store: Store) -> None:
    assert store.record_delivery("d-1", "model_version.created")
    assert not store.record_delivery("d-1", "model_version.created")
    store.prune_deliveries(timedelta(seconds=-1))  # everything is older than "in a second"
    assert store.record_delivery("d-1", "model_version.created")


def test_a_new_database_is_a_new_epoch(tmp_path: Path) -> None:
    stores = []
    for name in ("a", "b"):
        engine = make_engine(f"sqlite:///{tmp_path}/{name}.db")
        migrate(engine)
        stores.append(Store(engine))
    first, second = (s.publish() for s in stores)
    assert first.epoch and second.epoch and first.epoch != second.epoch
    assert stores[0].publish().epoch == first.epoch  # kept across publishes (and restarts)

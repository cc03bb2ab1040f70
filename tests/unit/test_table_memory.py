"""What a routing table costs to keep and to encode (issue 20: the controller's memory at 50,000
versions): equal frozen parts of one build made once, and the long-poll's body made a model at
a time, byte for byte the canonical JSON of the whole table."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import weakref
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from controller.app import create_app
from controller.broadcaster import TableBroadcaster
from controller.database import make_engine, migrate
from controller.records import ModelRecord, VersionRecord
from controller.settings import ControllerSettings
from controller.store import Store
from controller.table_builder import build_table, canonical_table, gzipped_table
from sigserve.ports import free_port
from wire.routing_table import (
    EnvironmentSpec,
    ModelEntry,
    Rollout,
    RoutingTable,
    VersionEntry,
    VersionState,
    for_schema,
)
from wire.table_signature import canonical_json

LIVE = VersionState.LIVE


def _fresh(text: str) -> str:
    """An equal string that is another object (as each row read from the database is)."""
    return "".join(list(text))


def _files(tag: str) -> list[dict[str, Any]]:
    return [
        {"path": _fresh("MLmodel"), "size": 120,
         "sha256": hashlib.sha256(tag.encode()).hexdigest()},
        {"path": _fresh("requirements.txt"), "size": 30,
         "sha256": _fresh(hashlib.sha256(b"reqs").hexdigest())},
        {"path": _fresh("weights.bin"), "size": 2**30, "sha256": None},
    ]  # fmt: skip


def _version(number: str, mlmodel: str) -> VersionRecord:
    return VersionRecord(
        version=number, state=LIVE, signature={"inputs": _fresh('[{"type": "string"}]'),
                                               "outputs": None},
        source=_fresh("models:/m-1"), artifact_uri=_fresh("mlflow-artifacts:/0/m-1/artifacts"),
        mlmodel_digest=_fresh("d" * 64), manifest=_files(mlmodel),
    )  # fmt: skip


def test_a_build_keeps_equal_files_and_strings_once() -> None:
    a, b = ModelRecord(name="a", policy="auto"), ModelRecord(name="b", policy="auto")
    a.versions = {"1": _version("1", "one"), "2": _version("2", "two")}
    b.versions = {"1": _version("1", "one")}
    table = build_table([a, b], 1, "e")
    a1, a2 = table.models["a"].versions["1"], table.models["a"].versions["2"]
    b1 = table.models["b"].versions["1"]
    assert a1.manifest is not None and a2.manifest is not None and b1.manifest is not None
    # The same file (path, size, digest) in two versions and two models: one object.
    assert a1.manifest[1] is a2.manifest[1] is b1.manifest[1]
    assert a1.manifest[0] is b1.manifest[0]
    assert a1.manifest[2] is a2.manifest[2]
    # Another MLmodel is another file; its path string is still the one kept.
    assert a1.manifest[0] is not a2.manifest[0]
    assert a1.manifest[0].path is a2.manifest[0].path
    assert a1.source is a2.source is b1.source
    assert a1.mlmodel_digest is b1.mlmodel_digest
    assert a1.signature is not None and a2.signature is not None
    assert a1.signature["inputs"] is a2.signature["inputs"]
    # Shared, never changed: what each version says is what its own record says.
    assert [f.model_dump() for f in a2.manifest] == a.versions["2"].manifest
    assert a2.signature == a.versions["2"].signature
    assert a2.source == "mlflow-artifacts:/0/m-1/artifacts"


def _table() -> RoutingTable:
    spec = EnvironmentSpec(digest="e" * 64, kind="layered", requirements=["tiny==1.0"])
    versions = {
        "1": VersionEntry(version="1", state=LIVE, source="s3://b/1", mlmodel_digest="a" * 64,
                          signature={"inputs": '[{"name": "x"}]', "outputs": None},
                          warnings=["minor: ü"]),
        "2": VersionEntry(version="2", state=VersionState.PENDING, environment=spec,
                          awaiting_proof=True, reasons=["being proven"]),
    }  # fmt: skip
    return RoutingTable(revision=7, epoch='odd"models":null epoch', models={
        "zeta": ModelEntry(name="zeta", default_version="1", versions=versions,
                           rollout=Rollout(id="r1", candidate="2", weight=0.25),
                           batch_wait_ms=2.5),
        "Älpha": ModelEntry(name="Älpha", default_version=None),
        "a b": ModelEntry(name="a b", default_version=None, contract={"inputs": None}),
    })  # fmt: skip


def test_the_body_made_a_model_at_a_time_is_the_canonical_json_of_the_table() -> None:
    for table in (_table(), for_schema(_table(), 2), RoutingTable(revision=0)):
        assert canonical_table(table) == canonical_json(table.model_dump(mode="json"))


def test_built_entries_share_one_set_of_names_that_a_copy_never_changes() -> None:
    a = ModelRecord(name="a", policy="auto")
    a.versions = {"1": _version("1", "one"), "2": _version("2", "two")}
    a.versions["2"].state = VersionState.PENDING
    a.versions["2"].own_environment = {"digest": "e" * 64, "kind": "layered"}
    table = build_table([a], 1, "e")
    one, two = table.models["a"].versions["1"], table.models["a"].versions["2"]
    assert one.model_fields_set is two.model_fields_set
    names = set(one.model_fields_set)
    # A replica of schema 2 gets version 2 withheld: a copy with fields of its own set.
    old = for_schema(table, 2)
    assert old.models["a"].versions["2"].state is VersionState.PENDING
    assert old.models["a"].versions["2"].environment is None
    assert one.model_fields_set == names and two.environment is not None
    assert two == VersionEntry.model_validate(two.model_dump())
    assert canonical_table(table) == canonical_json(table.model_dump(mode="json"))


def _rebuilt(revision: int) -> RoutingTable:
    a = ModelRecord(name="a", policy="auto")
    a.versions = {"1": _version("1", "one")}
    return build_table([a], revision, "e")


def test_the_revision_held_built_anew_is_taken_so_its_entries_are_kept_once() -> None:
    async def run() -> None:
        broadcaster = TableBroadcaster()
        first = _rebuilt(3)
        old = weakref.ref(first.models["a"])
        await broadcaster.offer(first)
        again = _rebuilt(3)  # the store's full rebuild: same revision, other objects
        await broadcaster.offer(again)
        assert broadcaster.current is again
        del first
        gc.collect()
        assert old() is None
        # The same entries in another table object: nothing to take (the body stays made).
        await broadcaster.offer(RoutingTable(revision=3, epoch="e", models=dict(again.models)))
        assert broadcaster.current is again
        # Other models under the revision held are not its content: never taken.
        await broadcaster.offer(RoutingTable(revision=3, epoch="e", models={}))
        assert broadcaster.current is again

    asyncio.run(run())


def test_the_long_poll_keeps_the_body_by_revision_not_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    token = "serving-token-0123456789"
    settings = ControllerSettings(
        home=tmp_path, admin_token=SecretStr("admin-token-0123456789"),
        webhook_secret=SecretStr("hook-secret-0123456789"),
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        resync_interval_s=3600, serving_token=SecretStr(token),
    )  # fmt: skip
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    Store(engine).publish()
    engine.dispose()
    encoded: list[RoutingTable] = []

    def counting(table: RoutingTable, key: bytes | None) -> tuple[bytes, str | None]:
        encoded.append(table)
        return gzipped_table(table, key)

    monkeypatch.setattr("controller.long_poll.gzipped_table", counting)
    with TestClient(create_app(settings)) as client:
        svc = client.app.state.services  # type: ignore[attr-defined]
        epoch = svc.broadcaster.current.epoch
        held = _rebuilt(2).model_copy(update={"epoch": epoch})
        client.portal.call(svc.broadcaster.offer, held)  # type: ignore[union-attr]
        auth = {"Authorization": f"Bearer {token}"}
        params = {"after": -1, "schema": 3}
        first = client.get("/routing-table", params=params, headers=auth)
        assert first.status_code == 200 and len(encoded) == 1
        encoded.clear()
        gone = weakref.ref(held)
        anew = _rebuilt(2).model_copy(update={"epoch": epoch})  # the revision held, rebuilt
        client.portal.call(svc.broadcaster.offer, anew)  # type: ignore[union-attr]
        assert svc.broadcaster.current is anew
        del held
        gc.collect()
        assert gone() is None  # nothing of the long-poll's keeps the table answered before
        again = client.get("/routing-table", params=params, headers=auth)
        assert again.content == first.content and encoded == []  # the body kept, not made again

"""What a routing table costs to keep and to encode (issue 20: the controller's memory at 50,000
versions): equal frozen parts of one build made once, and the long-poll's body made a model at
a time, byte for byte the canonical JSON of the whole table."""

from __future__ import annotations

import hashlib
from typing import Any

from controller.records import ModelRecord, VersionRecord
from controller.table_builder import build_table, canonical_table
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

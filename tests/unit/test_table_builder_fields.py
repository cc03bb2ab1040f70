"""What ``controller.table_builder`` shares between the objects of one build stays true for each
object: the set of field names given (shared per class and names given, never per class only),
and the split of the encoded table's head around its ``models`` key."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from controller import store_tables
from controller.records import ModelRecord, VersionRecord
from controller.store_tables import _Built, built_digest, built_json
from controller.table_builder import build_table, canonical_table, content_digest
from wire.routing_table import RoutingTable, VersionState
from wire.table_signature import canonical_json

DIGEST = hashlib.sha256(b"MLmodel").hexdigest()


def _version(number: str, manifest: list[dict[str, object]]) -> VersionRecord:
    return VersionRecord(
        version=number, state=VersionState.LIVE, artifact_uri="s3://b/m", manifest=manifest
    )


def test_each_file_keeps_the_names_it_was_given_whichever_was_built_first() -> None:
    """A file too large to hash has no ``sha256``; built first, its set of names must not become
    every later file's (``model_fields_set`` would say a hashed file's digest was not given)."""
    for first, second in (("big", "small"), ("small", "big")):
        files = {
            "big": {"path": "weights.bin", "size": 2**33},
            "small": {"path": "MLmodel", "size": 120, "sha256": DIGEST},
        }
        model = ModelRecord(name="m", policy="auto")
        model.versions = {"1": _version("1", [files[first]]), "2": _version("2", [files[second]])}
        table = build_table([model], 1, "e")
        for number, which in (("1", first), ("2", second)):
            manifest = table.models["m"].versions[number].manifest
            assert manifest is not None
            assert manifest[0].model_fields_set == set(files[which]), (first, number)


class _Later(RoutingTable):
    """A table of a later schema whose new top-level field sorts before ``models`` and holds an
    object with a ``models`` key: the text the old split looked for, in another field."""

    meta: dict[str, Any] = {"models": None, "notes": {"models": {}}}


def _later() -> _Later:
    model = ModelRecord(name="m", policy="auto")
    model.versions = {"1": _version("1", [{"path": "MLmodel", "size": 1, "sha256": DIGEST}])}
    return _Later(revision=3, epoch="e", models=build_table([model], 3, "e").models)


def test_the_body_is_split_at_the_models_key_whatever_another_field_holds() -> None:
    table = _later()
    assert canonical_table(table) == canonical_json(table.model_dump(mode="json"))
    empty = _Later(revision=0)
    assert canonical_table(empty) == canonical_json(empty.model_dump(mode="json"))


def test_the_digest_is_split_at_the_models_key_whatever_another_field_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a publish hashes a model at a time (``built_digest``) is what ``content_digest``
    hashes for the whole table, with such a field in the head."""
    monkeypatch.setattr(store_tables, "RoutingTable", _Later)
    table = _later()
    built = _Built(epoch="e")
    for name, entry in table.models.items():
        dumped = json.dumps(entry.model_dump(mode="json"), sort_keys=True)
        built.fragments[name] = json.dumps(name) + ": " + dumped
    content = table.model_dump(mode="json", exclude={"revision", "epoch"})
    assert built_json(built) == json.dumps(content, sort_keys=True)
    assert built_digest(built) == content_digest(table)
    assert built_digest(_Built(epoch="e")) == content_digest(_Later(revision=0, epoch="e"))

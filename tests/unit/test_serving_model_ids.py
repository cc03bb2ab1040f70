"""A model id's key (two SHA-256 digests) is made once per table entry, not on every request,
and is the same value as before: ``name/version@`` the first 16 hex digits of the SHA-256 of
the source, the MLmodel digest and the manifest's digest."""

from __future__ import annotations

import gc
import hashlib
from typing import Any

import pytest

import serving.model_ids
from serving import resolve as resolving
from serving.resolve import checked_artifact, resolve
from wire.artifact_manifest import ManifestFile, manifest_digest
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState

MLMODEL = "AB" * 32
FILES = [
    ManifestFile(path="MLmodel", size=10, sha256="ab" * 32),
    ManifestFile(path="m.pkl", size=3),
]


def _table(source: str = "models:/m-1") -> RoutingTable:
    entry = VersionEntry(version="1", state=VersionState.LIVE, source=source,
                         mlmodel_digest=MLMODEL, manifest=FILES)  # fmt: skip
    model = ModelEntry(name="m", default_version="1", versions={"1": entry})
    return RoutingTable(revision=1, models={"m": model})


def _counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]

    def counting(files: Any) -> str:
        calls[0] += 1
        return manifest_digest(files)

    monkeypatch.setattr(serving.model_ids, "manifest_digest", counting)
    return calls


def test_the_key_is_made_once_per_table_entry_and_is_the_same_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _counted(monkeypatch)
    table = _table()
    ids = set()
    for _ in range(3):  # three requests, each asking its target's id as the model host does
        target = resolve(table, "m", None)
        ids |= {target.model_id, target.model_id, target.model_id, target.artifact.key}
    assert calls == [1]
    key = hashlib.sha256(
        "\n".join(["models:/m-1", MLMODEL.lower(), manifest_digest(FILES)]).encode()
    ).hexdigest()[:16]
    assert ids == {f"m/1@{key}", key}


def test_another_entry_is_another_artifact_and_a_gone_entry_is_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _counted(monkeypatch)
    first, second = _table("models:/m-1"), _table("models:/m-2")
    one, two = resolve(first, "m", "1"), resolve(second, "m", "1")
    assert one.model_id != two.model_id and calls == [2]
    entry = second.models["m"].versions["1"]
    assert checked_artifact("m", entry) is two.artifact
    # By this entry's key, not by the map's size: other tests' entries die in the same collection.
    gone, kept = id(entry), id(first.models["m"].versions["1"])
    assert resolving._ARTIFACTS.get(gone) is two.artifact
    del second, two, entry
    gc.collect()
    assert gone not in resolving._ARTIFACTS and kept in resolving._ARTIFACTS
    assert resolve(first, "m", "1").artifact is one.artifact

"""What ``controller.table_builder`` shares between the objects of one build stays true for each
object: the set of field names given (shared per class and names given, never per class only),
and the split of the encoded table's head around its ``models`` key."""

from __future__ import annotations

import hashlib

from controller.records import ModelRecord, VersionRecord
from controller.table_builder import build_table
from wire.routing_table import VersionState

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

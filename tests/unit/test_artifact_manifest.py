"""The manifest of an artifact: built from a real MLflow artifact repository on a tmp dir, and
checked against the tree a replica downloaded (``wire.artifact_manifest.differences``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from controller.artifact_manifest import build_manifest
from controller.read_reasons import ReadFailure
from wire.artifact_manifest import ManifestFile, differences, manifest_digest

LIMIT = 1000  # a small threshold, so a "weights" file above it costs a few KiB


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "artifact"
    (root / "code").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "python_model.pkl").write_bytes(b"\x80\x05pickle-bytes" * 10)
    (root / "code" / "model.py").write_text("ANSWER = 42\n")
    (root / "weights.bin").write_bytes(b"w" * (LIMIT + 1))
    return root


def manifest_of(root: Path, **kwargs: Any) -> list[ManifestFile]:
    return build_manifest(LocalArtifactRepository(str(root)), read={}, hash_limit=LIMIT, **kwargs)


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_every_file_is_listed_with_its_size_and_small_ones_hashed(tree: Path) -> None:
    manifest = {f.path: f for f in manifest_of(tree)}
    assert sorted(manifest) == ["MLmodel", "code/model.py", "python_model.pkl", "weights.bin"]
    pickle = tree / "python_model.pkl"
    assert manifest["python_model.pkl"].size == pickle.stat().st_size
    assert manifest["python_model.pkl"].sha256 == hashlib.sha256(pickle.read_bytes()).hexdigest()
    # Above the threshold: its size only, never downloaded for a hash.
    assert manifest["weights.bin"] == ManifestFile(path="weights.bin", size=LIMIT + 1)
    assert differences(tree, list(manifest.values())) == []


def test_a_file_changed_in_place_with_the_same_size_is_found(tree: Path) -> None:
    manifest = manifest_of(tree)
    flip_last_byte(tree / "python_model.pkl")
    assert differences(tree, manifest) == ["python_model.pkl: changed"]


def test_a_file_added_is_found(tree: Path) -> None:
    manifest = manifest_of(tree)
    (tree / "code" / "extra.py").write_text("import os\n")
    assert differences(tree, manifest) == ["code/extra.py: not checked"]


def test_a_file_removed_is_found(tree: Path) -> None:
    manifest = manifest_of(tree)
    (tree / "code" / "model.py").unlink()
    assert differences(tree, manifest) == ["code/model.py: missing"]


def test_a_file_above_the_threshold_is_bound_by_its_size(tree: Path) -> None:
    manifest = manifest_of(tree)
    weights = tree / "weights.bin"
    # Changed in place at the same size: not seen, which is the stated price of not hashing it.
    flip_last_byte(weights)
    assert differences(tree, manifest) == []
    weights.write_bytes(weights.read_bytes() + b"w")
    assert differences(tree, manifest) == [f"weights.bin: size {LIMIT + 2}, not {LIMIT + 1}"]


def test_a_link_in_the_download_is_never_taken_for_a_checked_file(tree: Path) -> None:
    manifest = manifest_of(tree)
    (tree / "code" / "model.py").unlink()
    (tree / "code" / "model.py").symlink_to(tree / "MLmodel")
    assert differences(tree, manifest) == ["code/model.py: missing",
                                           "code/model.py: not a regular file"]


def test_files_already_read_are_hashed_from_those_bytes(tree: Path) -> None:
    # The MLmodel the decision was made on is what is bound, not a second fetch of it.
    read = b"flavors: {python_function: {}}\n"
    manifest = build_manifest(LocalArtifactRepository(str(tree)), read={"MLmodel": read},
                              hash_limit=LIMIT)
    mlmodel = next(f for f in manifest if f.path == "MLmodel")
    assert mlmodel.sha256 == hashlib.sha256(read).hexdigest() and mlmodel.size == len(read)


def test_an_artifact_of_too_many_files_is_refused(tree: Path) -> None:
    with pytest.raises(ReadFailure) as caught:
        manifest_of(tree, max_files=3)
    assert caught.value.public == "its artifact holds more than 3 files"


def test_many_differences_are_named_a_few_then_counted(tree: Path) -> None:
    manifest = manifest_of(tree)
    for i in range(9):
        (tree / f"extra{i}.py").write_text("")
    found = differences(tree, manifest)
    assert len(found) == 6 and found[-1] == "and 4 more"


def test_the_manifest_digest_ignores_order_and_sees_every_field() -> None:
    a = ManifestFile(path="a", size=1, sha256="0" * 64)
    b = ManifestFile(path="b", size=2)
    assert manifest_digest([a, b]) == manifest_digest([b, a])
    assert manifest_digest([a, b]) != manifest_digest([a, ManifestFile(path="b", size=3)])


def test_the_manifest_read_goes_into_the_signed_table_entry(tree: Path) -> None:
    from controller.artifacts import ArtifactFacts
    from controller.environment import ArtifactEnvironment
    from controller.reconciler import merge_observed
    from controller.records import ModelRecord
    from controller.registry import ObservedVersion
    from controller.table_builder import build_table
    from wire.routing_table import RoutingTable
    from wire.table_signature import ForgedTable, canonical_json, sign, table_key, verify

    manifest = tuple(manifest_of(tree))
    facts = ArtifactFacts(source=str(tree), mlmodel_digest="a" * 64, signature=None,
                          environment=ArtifactEnvironment(None, None, False), manifest=manifest)
    record = merge_observed(ModelRecord(name="m", policy="strict"),
                            [ObservedVersion("1", "READY", "models:/m-1")], {"1": facts}, {})
    table = build_table([record], revision=1, epoch="e")
    entry = table.models["m"].versions["1"]
    assert entry.manifest == list(manifest)
    document = table.model_dump(mode="json")
    validated = RoutingTable.model_validate(document).models["m"].versions["1"]
    assert validated.manifest == entry.manifest
    key = table_key("t" * 32)
    signature = sign(canonical_json(document), key)
    document["models"]["m"]["versions"]["1"]["manifest"][0]["size"] += 1
    with pytest.raises(ForgedTable):
        verify(canonical_json(document), signature, key)


def test_a_file_listed_without_its_size_is_read_no_further_than_the_threshold(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.entities import FileInfo

    real = LocalArtifactRepository.list_artifacts

    def unsized(self: Any, path: str | None = None) -> list[FileInfo]:
        return [FileInfo(f.path, f.is_dir, None) for f in real(self, path)]

    monkeypatch.setattr(LocalArtifactRepository, "list_artifacts", unsized)
    with pytest.raises(ReadFailure) as caught:
        manifest_of(tree)  # weights.bin is past the threshold, and nothing said so
    assert caught.value.public == "a file of its artifact is larger than its listing says " \
                                  "(past 1000 bytes)"
    (tree / "weights.bin").unlink()
    assert {f.path: f.size for f in manifest_of(tree)}["python_model.pkl"] == 140

"""The replica loads an artifact only when every file is the one the controller listed: real
MLflow, a tiny pyfunc saved on disk, its manifest built as the controller builds it."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow.pyfunc import PythonModel, save_model
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from controller.artifact_manifest import build_manifest
from serving.exceptions import ModelUnavailable
from serving.loader import LoadedModel, LoadFailure, PyfuncLoader
from serving.model_ids import Artifact, model_id


class Tagged(PythonModel):
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[str]:
        return [f"{self.tag}:{p}" for p in model_input["prompt"]]


def saved(directory: Path, tag: str) -> Path:
    path = directory / tag
    save_model(path=str(path), python_model=Tagged(tag), pip_requirements=[])
    return path


def checked(path: Path, *, with_manifest: bool = True) -> Artifact:
    """The artifact as the controller binds it (a table from before manifests has none)."""
    digest = hashlib.sha256((path / "MLmodel").read_bytes()).hexdigest()
    if not with_manifest:
        return Artifact(path.as_uri(), digest)
    manifest = build_manifest(LocalArtifactRepository(str(path)), read={})
    return Artifact(path.as_uri(), digest, tuple(manifest))


def load(loader: PyfuncLoader, artifact: Artifact) -> LoadedModel:
    return asyncio.run(loader.load(model_id("m", "1", artifact), artifact))


def answer(loaded: LoadedModel) -> Any:
    return list(loaded.model.predict(pd.DataFrame({"prompt": ["hi"]})))


@pytest.fixture()
def good_and_evil(tmp_path: Path) -> tuple[Path, Path]:
    return saved(tmp_path, "good"), saved(tmp_path, "evil")


def test_the_checked_files_load(good_and_evil: tuple[Path, Path]) -> None:
    good, _ = good_and_evil
    loaded = load(PyfuncLoader(), checked(good))
    assert answer(loaded) == ["good:hi"]
    loaded.close()


def test_a_pickle_replaced_after_the_check_is_refused_and_reported(
    good_and_evil: tuple[Path, Path],
) -> None:
    good, evil = good_and_evil
    artifact = checked(good)
    # Another model's pickle of the same size: the MLmodel, and so its digest, is untouched.
    assert (good / "python_model.pkl").stat().st_size == (evil / "python_model.pkl").stat().st_size
    shutil.copy(evil / "python_model.pkl", good / "python_model.pkl")
    reports: list[LoadFailure] = []
    loader = PyfuncLoader(on_permanent_failure=reports.append)

    with pytest.raises(ModelUnavailable) as caught:
        load(loader, artifact)

    assert caught.value.status == 503
    why = f"the files of {artifact.source} are not the ones the controller checked " \
          "(python_model.pkl: changed)"
    assert why in caught.value.detail
    assert loader.refusals == [
        {"model_id": model_id("m", "1", artifact), "source": artifact.source, "reason": why}
    ]
    assert reports == [
        LoadFailure("m", "1", artifact.mlmodel_digest, "artifact-mismatch", why)
    ]


@pytest.mark.parametrize("change", ["added", "removed"])
def test_a_file_added_or_removed_after_the_check_is_refused(
    good_and_evil: tuple[Path, Path], change: str
) -> None:
    good, _ = good_and_evil
    artifact = checked(good)
    if change == "added":
        (good / "sitecustomize.py").write_text("import os\n")
    else:
        (good / "python_env.yaml").unlink()
    reports: list[LoadFailure] = []
    with pytest.raises(ModelUnavailable):
        load(PyfuncLoader(on_permanent_failure=reports.append), artifact)
    assert [r.kind for r in reports] == ["artifact-mismatch"]
    expected = "sitecustomize.py: not checked" if change == "added" else "python_env.yaml: missing"
    assert expected in reports[0].cause


def test_a_version_decided_before_manifests_is_bound_by_its_mlmodel_alone(
    good_and_evil: tuple[Path, Path],
) -> None:
    # A table entry without a manifest (a controller from before them) still serves: the
    # replica checks what that controller bound, the MLmodel, as it always did.
    good, evil = good_and_evil
    artifact = checked(good, with_manifest=False)
    shutil.copy(evil / "python_model.pkl", good / "python_model.pkl")
    loaded = load(PyfuncLoader(), artifact)
    assert answer(loaded) == ["evil:hi"]
    loaded.close()


def test_another_manifest_is_another_model_id(good_and_evil: tuple[Path, Path]) -> None:
    good, _ = good_and_evil
    bound = checked(good)
    assert model_id("m", "1", bound) != model_id("m", "1", checked(good, with_manifest=False))

"""The loader loads exactly the checked artifact: real MLflow, a tiny pyfunc saved on disk."""

from __future__ import annotations

import asyncio
import gc
import hashlib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow.pyfunc import PythonModel, save_model

from serving.exceptions import ModelUnavailable
from serving.loader import LoadedModel, LoadFailure, PyfuncLoader
from serving.model_ids import Artifact, bind, model_id, parse_model_id
from serving.predict_call import predict


class Tagged(PythonModel):
    """Answers each prompt with a tag, so a test can tell which artifact ran."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[str]:
        return [f"{self.tag}:{p}" for p in model_input["prompt"]]


def saved(directory: Path, tag: str) -> Artifact:
    path = directory / tag
    save_model(path=str(path), python_model=Tagged(tag), pip_requirements=[])
    digest = hashlib.sha256((path / "MLmodel").read_bytes()).hexdigest()
    return Artifact(path.as_uri(), digest)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Artifact]:
    directory = tmp_path_factory.mktemp("artifacts")
    return saved(directory, "first"), saved(directory, "second")


def load(loader: PyfuncLoader, name: str, version: str, artifact: Artifact) -> LoadedModel:
    return asyncio.run(loader.load(model_id(name, version, artifact), artifact))


def test_the_checked_artifact_loads_and_predicts(artifacts: tuple[Artifact, Artifact]) -> None:
    first, _ = artifacts
    loader = PyfuncLoader()
    loaded = load(loader, "echo", "1", first)
    answer = asyncio.run(predict(loaded, pd.DataFrame({"prompt": ["a", "b"]}), None))
    assert list(answer) == ["first:a", "first:b"]
    assert loader.attempts == [model_id("echo", "1", first)]
    assert loader.refusals == []
    # Loaded from a copy of its own, not from the source.
    assert loaded.directory.is_dir()
    assert not Path(first.source.removeprefix("file://")).is_relative_to(loaded.directory)


def test_an_artifact_with_another_mlmodel_digest_is_refused_and_recorded(
    artifacts: tuple[Artifact, Artifact],
) -> None:
    first, second = artifacts
    # What a model deleted and registered again looks like: the decided digest is the old
    # artifact's, the source now holds another one.
    swapped = Artifact(second.source, first.mlmodel_digest)
    loader = PyfuncLoader()
    # Raising is the only way out: no model object reaches the caller.
    with pytest.raises(ModelUnavailable) as refused:
        load(loader, "echo", "1", swapped)
    assert refused.value.status == 503
    detail = refused.value.detail
    assert "controller checked" in detail
    found = hashlib.sha256(
        (Path(second.source.removeprefix("file://")) / "MLmodel").read_bytes()
    ).hexdigest()
    assert found[:12] in detail and first.mlmodel_digest[:12] in detail
    refused_id = model_id("echo", "1", swapped)
    assert loader.attempts == [refused_id]
    assert loader.refusals == [
        {"model_id": refused_id, "source": second.source, "reason": loader.refusals[0]["reason"]}
    ]
    assert first.mlmodel_digest[:12] in loader.refusals[0]["reason"]


def test_a_refused_load_leaves_nothing_on_disk(
    artifacts: tuple[Artifact, Artifact], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = artifacts
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    with pytest.raises(ModelUnavailable):
        load(PyfuncLoader(), "echo", "1", Artifact(second.source, first.mlmodel_digest))
    # This process's own parent of downloads stays (serving.model_dirs), empty.
    assert [list(p.iterdir()) for p in tmp_path.iterdir()] in ([], [[]])


def test_the_directory_goes_with_the_model(artifacts: tuple[Artifact, Artifact]) -> None:
    first, _ = artifacts
    loaded = load(PyfuncLoader(), "echo", "1", first)
    directory = loaded.directory
    assert (directory / "first" / "MLmodel").is_file()
    del loaded
    gc.collect()
    assert not directory.exists()


def test_a_loaded_model_is_kept_out_of_full_collections_until_it_goes(
    artifacts: tuple[Artifact, Artifact],
) -> None:
    # Frozen objects are skipped by every collection: a big model costs no GC pause.
    gc.unfreeze()
    loaded = load(PyfuncLoader(), "echo", "1", artifacts[0])
    assert gc.get_freeze_count() > 0
    del loaded
    gc.collect()
    # Evicted: the heap is the collector's again, so cycles the model left can be found.
    assert gc.get_freeze_count() == 0


def test_closing_twice_is_harmless(artifacts: tuple[Artifact, Artifact]) -> None:
    first, _ = artifacts
    loaded = load(PyfuncLoader(), "echo", "1", first)
    loaded.close()
    assert not loaded.directory.exists()
    loaded.close()


def test_a_missing_artifact_is_a_503_not_a_refusal(tmp_path: Path) -> None:
    gone = Artifact((tmp_path / "nothing").as_uri(), "0" * 64)
    loader = PyfuncLoader()
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        load(loader, "echo", "1", gone)
    assert loader.attempts == [model_id("echo", "1", gone)] and loader.refusals == []


@pytest.mark.parametrize("name", ["echo", "team/echo", "a/b/c", "x@y", "team/x@y/z"])
def test_model_ids_read_back_from_the_right(name: str) -> None:
    artifact = Artifact("models:/m-123", "ab" * 32)
    value = model_id(name, "12", artifact)
    assert value.startswith(f"{name}/12@")
    parsed = parse_model_id(value)
    assert (parsed.name, parsed.version, parsed.key) == (name, "12", artifact.key)
    assert str(parsed) == value


@pytest.mark.parametrize("value", ["echo/1", "echo@0123456789abcdef", "/1@0123456789abcdef", ""])
def test_malformed_model_ids_are_refused(value: str) -> None:
    with pytest.raises(ModelUnavailable, match="malformed model id"):
        parse_model_id(value)


def test_an_id_binds_one_artifact(artifacts: tuple[Artifact, Artifact]) -> None:
    first, second = artifacts
    value = model_id("echo", "1", first)
    assert bind(value, first).key == first.key
    loader = PyfuncLoader()
    with pytest.raises(ModelUnavailable, match="does not name the artifact"):
        asyncio.run(loader.load(value, second))
    assert loader.attempts == []


def broken_pickle(directory: Path) -> Artifact:
    """A saved pyfunc whose ``python_model.pkl`` was cut short after the MLmodel was checked."""
    artifact = saved(directory, "broken")
    pickle = directory / "broken" / "python_model.pkl"
    pickle.write_bytes(pickle.read_bytes()[:10])
    return artifact


def test_a_failed_load_names_its_cause_and_the_artifact_not_the_replica(tmp_path: Path) -> None:
    broken = broken_pickle(tmp_path / "src")
    loader = PyfuncLoader()
    with pytest.raises(ModelUnavailable) as failed:
        load(loader, "echo", "2", broken)
    detail = failed.value.detail
    assert "could not be loaded: UnpicklingError: pickle data was truncated" in detail
    assert failed.value.extensions == {"model": "echo", "version": "2"}
    assert "sigserve-models-" not in detail  # the replica's own download directory

    gone = Artifact((tmp_path / "src" / "nothing").as_uri(), "0" * 64)
    with pytest.raises(ModelUnavailable) as missing:
        load(loader, "echo", "3", gone)
    assert "sigserve-models-" not in missing.value.detail
    assert "MlflowException" in missing.value.detail and "'nothing'" in missing.value.detail


def test_a_failed_load_is_not_tried_again_for_a_while(tmp_path: Path) -> None:
    broken = broken_pickle(tmp_path)
    value = model_id("echo", "2", broken)
    now = [100.0]
    loader = PyfuncLoader(remember_failures_s=5.0, clock=lambda: now[0])
    with pytest.raises(ModelUnavailable) as first:
        load(loader, "echo", "2", broken)

    now[0] += 4.9
    with pytest.raises(ModelUnavailable) as again:
        loader.check(value)
    with pytest.raises(ModelUnavailable) as loaded_again:
        load(loader, "echo", "2", broken)
    for error in (again.value, loaded_again.value):
        assert error is not first.value  # each request its own exception
        assert (error.detail, error.extensions) == (first.value.detail, first.value.extensions)
    assert loader.attempts == [value]  # remembered, not tried

    now[0] += 0.2
    loader.check(value)  # forgotten: the next request tries again
    with pytest.raises(ModelUnavailable):
        load(loader, "echo", "2", broken)
    assert loader.attempts == [value, value]


def test_a_refusal_is_remembered_too_and_other_ids_are_not_held_back(
    artifacts: tuple[Artifact, Artifact],
) -> None:
    first, second = artifacts
    swapped = Artifact(second.source, first.mlmodel_digest)
    loader = PyfuncLoader(remember_failures_s=60.0)
    with pytest.raises(ModelUnavailable, match="controller checked"):
        load(loader, "echo", "1", swapped)
    with pytest.raises(ModelUnavailable, match="controller checked"):
        load(loader, "echo", "1", swapped)
    assert len(loader.attempts) == 1 and len(loader.refusals) == 1
    load(loader, "echo", "1", first)  # another artifact, another id: loads


def test_only_failures_that_cannot_pass_are_reported(
    tmp_path: Path, artifacts: tuple[Artifact, Artifact]
) -> None:
    reported: list[LoadFailure] = []
    loader = PyfuncLoader(on_permanent_failure=reported.append)
    broken = broken_pickle(tmp_path / "src")
    with pytest.raises(ModelUnavailable):
        load(loader, "echo", "2", broken)
    # A download that failed (the store down, the path gone) may pass: not reported.
    gone = Artifact((tmp_path / "nothing").as_uri(), "0" * 64)
    with pytest.raises(ModelUnavailable):
        load(loader, "echo", "3", gone)
    # Another MLmodel than the one checked: reported.
    first, _ = artifacts
    other = Artifact(first.source, "ab" * 32)
    with pytest.raises(ModelUnavailable):
        load(loader, "echo", "4", other)
    assert [(f.version, f.kind, f.mlmodel_digest) for f in reported] == [
        ("2", "load-failed", broken.mlmodel_digest),
        ("4", "artifact-mismatch", "ab" * 32),
    ]
    assert reported[0].cause.startswith("UnpicklingError: pickle data was truncated")
    assert "sigserve-models-" not in reported[0].cause
    assert "not " + ("ab" * 32)[:12] in reported[1].cause


def test_a_reporter_that_raises_does_not_change_the_clients_answer(tmp_path: Path) -> None:
    def broken_reporter(_: LoadFailure) -> None:
        raise RuntimeError("no loop")

    loader = PyfuncLoader(on_permanent_failure=broken_reporter)
    with pytest.raises(ModelUnavailable, match="UnpicklingError"):
        load(loader, "echo", "2", broken_pickle(tmp_path))


# Whose fault a failed load is: the artifact's (reported) or the replica's (503, tried again) --


class Raising(PythonModel):
    """Raises ``make()`` from ``load_context`` while ``marker`` exists (always, without one).

    ``once``: the marker is removed as it raises, so the next load passes.
    """

    def __init__(self, make: Any, marker: str | None = None, *, once: bool = False) -> None:
        self.make = make
        self.marker = marker
        self.once = once

    def load_context(self, context: Any) -> None:
        if self.marker is None or Path(self.marker).exists():
            if self.once and self.marker is not None:
                Path(self.marker).unlink()
            raise self.make()

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[str]:
        return ["raising:" + p for p in model_input["prompt"]]


def raising(
    directory: Path, make: Any, marker: Path | None = None, *, once: bool = False
) -> Artifact:
    path = directory / f"raising-{len(list(directory.glob('raising-*')))}"
    model = Raising(make, str(marker) if marker else None, once=once)
    save_model(path=str(path), python_model=model, pip_requirements=[])
    digest = hashlib.sha256((path / "MLmodel").read_bytes()).hexdigest()
    return Artifact(path.as_uri(), digest)


def _no_space() -> OSError:
    return OSError(28, "No space left on device")


def _requests_down() -> Exception:
    import requests

    return requests.exceptions.ConnectionError("Max retries exceeded (Connection refused)")


def _urllib_down() -> Exception:
    import urllib.error

    return urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))


def _httpx_timeout() -> Exception:
    import httpx

    return httpx.ReadTimeout("timed out")


def _wrapped_network() -> Exception:
    # What a library that wraps its network errors raises: the cause is the network.
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError as exc:
        try:
            raise RuntimeError("could not fetch the tokenizer") from exc
        except RuntimeError as wrapped:
            return wrapped


REPLICAS_FAULTS = {
    "MemoryError": MemoryError,
    "ENOSPC": _no_space,
    "ConnectionError": lambda: ConnectionError("the feature store refused"),
    "TimeoutError": lambda: TimeoutError("timed out"),
    "requests": _requests_down,
    "urllib": _urllib_down,
    "httpx": _httpx_timeout,
    "wrapped": _wrapped_network,
}


@pytest.mark.parametrize("fault", sorted(REPLICAS_FAULTS))
def test_a_load_that_failed_for_the_replicas_reasons_is_503_and_not_reported(
    tmp_path: Path, fault: str
) -> None:
    reported: list[LoadFailure] = []
    loader = PyfuncLoader(on_permanent_failure=reported.append)
    artifact = raising(tmp_path, REPLICAS_FAULTS[fault])
    with pytest.raises(ModelUnavailable) as failed:
        load(loader, "echo", "2", artifact)
    assert failed.value.status == 503 and failed.value.retry_after
    assert reported == []  # quarantining it everywhere would punish the artifact for the replica


def _missing_module() -> Exception:
    return ModuleNotFoundError("No module named 'tokenizers_the_image_lacks'")


@pytest.mark.parametrize(
    "make",
    [_missing_module, lambda: ImportError("cannot import name 'T5'")],
    ids=["module", "name"],
)
def test_an_import_the_image_lacks_is_the_artifacts_and_reported(tmp_path: Path, make: Any) -> None:
    reported: list[LoadFailure] = []
    loader = PyfuncLoader(on_permanent_failure=reported.append)
    with pytest.raises(ModelUnavailable, match=r"ImportError|ModuleNotFoundError"):
        load(loader, "echo", "2", raising(tmp_path, make))
    assert [(f.version, f.kind) for f in reported] == [("2", "load-failed")]


def test_an_artifact_without_the_pyfunc_flavor_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "flavorless"
    save_model(path=str(path), python_model=Tagged("x"), pip_requirements=[])
    mlmodel = path / "MLmodel"
    text = mlmodel.read_text()
    mlmodel.write_text(text.replace("python_function:", "not_a_flavor:"))
    artifact = Artifact(path.as_uri(), hashlib.sha256(mlmodel.read_bytes()).hexdigest())
    reported: list[LoadFailure] = []
    with pytest.raises(ModelUnavailable, match="flavor"):
        load(PyfuncLoader(on_permanent_failure=reported.append), "echo", "2", artifact)
    assert [f.kind for f in reported] == ["load-failed"]


def test_the_replicas_failures_back_off_and_a_load_that_passes_resets_it(tmp_path: Path) -> None:
    marker = tmp_path / "store-down"
    marker.touch()
    artifact = raising(tmp_path, MemoryError, marker)
    value = model_id("echo", "2", artifact)
    now = [0.0]
    loader = PyfuncLoader(
        remember_failures_s=5.0, max_remember_failures_s=30.0, clock=lambda: now[0]
    )
    windows = []
    for _ in range(5):
        with pytest.raises(ModelUnavailable) as failed:
            load(loader, "echo", "2", artifact)
        windows.append(failed.value.retry_after)
        # Remembered for the whole window the Retry-After announced, no longer.
        now[0] += failed.value.retry_after - 0.1
        with pytest.raises(ModelUnavailable) as remembered:
            loader.check(value)
        assert remembered.value.retry_after == 1  # what is left of the window, rounded up
        now[0] += 0.1
        loader.check(value)
    assert windows == [5, 10, 20, 30, 30]
    assert len(loader.attempts) == 5

    marker.unlink()
    load(loader, "echo", "2", artifact)
    marker.touch()
    with pytest.raises(ModelUnavailable) as again:
        load(loader, "echo", "2", artifact)
    assert again.value.retry_after == 5  # the first failure since a load passed


def test_an_artifacts_failure_is_remembered_for_the_plain_window(tmp_path: Path) -> None:
    broken = broken_pickle(tmp_path)
    now = [0.0]
    loader = PyfuncLoader(remember_failures_s=5.0, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(ModelUnavailable) as failed:
            load(loader, "echo", "2", broken)
        assert failed.value.retry_after == 5  # reported: the controller's 409 ends it, not time
        now[0] += 5.0


# A default is confirmed by a second, fresh load before it is reported ----------------------


def test_a_default_that_fails_once_loads_on_a_fresh_download_and_is_not_reported(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "first-load-fails"
    marker.touch()
    artifact = raising(tmp_path, _missing_module, marker, once=True)
    reported: list[LoadFailure] = []
    loader = PyfuncLoader(on_permanent_failure=reported.append)
    value = model_id("echo", "1", artifact)
    loaded = asyncio.run(loader.load(value, artifact, confirm=True))
    answer = asyncio.run(predict(loaded, pd.DataFrame({"prompt": ["a"]}), None))
    assert list(answer) == ["raising:a"]
    assert reported == []
    assert loader.attempts == [value, value]  # the second from a fresh download


def test_a_default_that_fails_twice_is_reported_once(tmp_path: Path) -> None:
    broken = broken_pickle(tmp_path)
    reported: list[LoadFailure] = []
    loader = PyfuncLoader(on_permanent_failure=reported.append)
    value = model_id("echo", "1", broken)
    with pytest.raises(ModelUnavailable, match="UnpicklingError"):
        asyncio.run(loader.load(value, broken, confirm=True))
    assert [f.kind for f in reported] == ["load-failed"]
    assert loader.attempts == [value, value]


def test_a_version_that_is_not_the_default_is_reported_on_its_first_failure(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "first-load-fails"
    marker.touch()
    artifact = raising(tmp_path, _missing_module, marker, once=True)
    reported: list[LoadFailure] = []
    loader = PyfuncLoader(on_permanent_failure=reported.append)
    with pytest.raises(ModelUnavailable):
        load(loader, "echo", "2", artifact)
    assert len(reported) == 1 and len(loader.attempts) == 1

"""Registry.artifact against a real MLflow registry, with no server: a sqlite store and a local
artifact root under tmp, the one allowed artifact source. Whether a file is there is decided by
the location's listing, whatever way a store words "not found"."""

from __future__ import annotations

import hashlib
import platform
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from controller.artifact_sources import SourceNotAllowed
from controller.environment import EnvironmentPolicy, ServingEnvironment, check_environment
from controller.exceptions import RegisteredModelGone, RegistryUnavailable, VersionUnreadable
from controller.read_reasons import NOT_ALLOWED, ReadFailure, public_reason
from controller.registry import Registry
from controller.registry_artifacts import ArtifactCache, Locations
from controller.registry_artifacts import python_version as _python_version

NAME = "artifact_facts"
REQUIREMENT = "definitely-not-installed-pkg==1.0"
MIB = 1 << 20
# MLflow's advice to add an input example, irrelevant here.
pytestmark = pytest.mark.filterwarnings("ignore:.*input example:UserWarning")


class Echo(mlflow.pyfunc.PythonModel):
    # MLflow infers the signature from these hints: list[str] in, list[str] out.
    def predict(self, context: Any, model_input: list[str], params: Any = None) -> list[str]:
        return model_input


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        # Registry() setdefaults these; setting them here means they are undone afterwards.
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        patch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # The store's default artifact root is ./mlruns: under tmp, not the working tree.
        patch.chdir(tmp)
        # set_tracking_uri exports MLFLOW_TRACKING_URI; the registry follows MLFLOW_REGISTRY_URI.
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_REGISTRY_URI", uri)
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            experiment = client.create_experiment("e", artifact_location=str(tmp / "artifacts"))
            for _ in range(3):
                with mlflow.start_run(experiment_id=experiment):
                    mlflow.pyfunc.log_model(
                        name="model",
                        python_model=Echo(),
                        pip_requirements=[REQUIREMENT],
                        registered_model_name=NAME,
                    )
            registry = Registry(uri, artifact_sources=[str(tmp / "artifacts")])
            yield {"uri": uri, "tmp": tmp, "client": client, "registry": registry}
        finally:
            mlflow.set_tracking_uri(previous)


@pytest.fixture(autouse=True)
def _read_afresh(store: dict[str, Any]) -> None:
    # The tests below change a version's files in place and read it again: each reads as a
    # version at a location not seen before would (the cache has a test of its own).
    store["registry"].artifacts = ArtifactCache()
    store["registry"]._locations = Locations()


def _local_dir(store: dict[str, Any], version: str) -> Path:
    return Path(store["client"].get_model_version_download_uri(NAME, version))


def _without_environment_files(store: dict[str, Any], version: str) -> None:
    directory = _local_dir(store, version)
    (directory / "requirements.txt").unlink(missing_ok=True)
    (directory / "python_env.yaml").unlink(missing_ok=True)


def test_artifact_reads_the_versions_facts(store: dict[str, Any]) -> None:
    facts = store["registry"].artifact(NAME, "1")
    directory = _local_dir(store, "1")
    assert facts.source == str(directory)
    assert directory.is_relative_to(store["tmp"] / "artifacts")
    assert facts.mlmodel_digest == hashlib.sha256((directory / "MLmodel").read_bytes()).hexdigest()
    signature = Model.load(str(directory / "MLmodel")).signature
    assert signature is not None
    assert facts.signature == signature.to_dict()
    env = facts.environment
    assert env.requirements is not None
    assert REQUIREMENT in env.requirements
    assert env.python_version == platform.python_version()
    assert env.pickled is True

    verdict = check_environment(env, ServingEnvironment.current(), EnvironmentPolicy.SHARED)
    assert len(verdict.blocking) == 1
    assert verdict.blocking[0].startswith(
        f"requirement {REQUIREMENT!r}: package 'definitely-not-installed-pkg' is not installed "
        "in the serving environment"
    )


def test_missing_environment_files_are_absent_not_errors(store: dict[str, Any]) -> None:
    _without_environment_files(store, "2")
    facts = store["registry"].artifact(NAME, "2")
    assert facts.environment.requirements is None
    # Without python_env.yaml the pyfunc flavor's python_version still says it.
    assert facts.environment.python_version == platform.python_version()
    assert facts.environment.pickled is True


def test_a_failed_download_of_a_file_that_exists_is_an_error(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    real = LocalArtifactRepository.download_artifacts

    def flaky(self: Any, artifact_path: str, dst_path: str | None = None) -> Any:
        if artifact_path == "requirements.txt":
            raise MlflowException("503 Server Error: Service Unavailable")
        return real(self, artifact_path, dst_path)

    monkeypatch.setattr(LocalArtifactRepository, "download_artifacts", flaky)
    with pytest.raises(RegistryUnavailable, match="503"):
        store["registry"].artifact(NAME, "1")


def _no_mlmodel(store: dict[str, Any], version: str) -> Path:
    directory = _local_dir(store, version)
    mlmodel = directory / "MLmodel"
    if mlmodel.exists():
        mlmodel.rename(directory / "MLmodel.moved")
    return directory


def test_a_version_without_an_mlmodel_is_not_an_mlflow_model_not_a_deleted_one(
    store: dict[str, Any],
) -> None:
    # A local store says RESOURCE_DOES_NOT_EXIST for the file, as it does for a deleted
    # version: the version is read again from the registry to tell the two apart.
    directory = _no_mlmodel(store, "3")
    with pytest.raises(VersionUnreadable) as exc:
        store["registry"].artifact(NAME, "3")
    assert str(exc.value).startswith(f"no MLmodel file at {directory}: this is not an MLflow "
                                     "model; log it with mlflow.<flavor>.log_model")
    shutil.rmtree(directory)  # nothing at all at its source: the same
    with pytest.raises(VersionUnreadable, match="no MLmodel file at"):
        store["registry"].artifact(NAME, "3")


def test_a_version_deleted_while_its_mlmodel_is_read_is_gone(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry: Registry = store["registry"]
    client = registry._client
    # The download URI was given, then the version was deleted before its MLmodel was read.
    monkeypatch.setattr(client, "get_model_version_download_uri",
                        lambda name, version: str(store["tmp"] / "artifacts" / "deleted"))
    with pytest.raises(RegisteredModelGone):
        registry.artifact(NAME, "99")


def test_an_unknown_version_is_gone(store: dict[str, Any]) -> None:
    with pytest.raises(RegisteredModelGone):
        store["registry"].artifact(NAME, "99")


def test_the_model_read_tells_a_recreated_model_and_carries_aliases_and_tags(
    store: dict[str, Any],
) -> None:
    client: MlflowClient = store["client"]
    registry: Registry = store["registry"]
    client.create_registered_model("again")
    first = registry.model("again").created_at
    assert first == client.get_registered_model("again").creation_timestamp
    client.delete_registered_model("again")
    with pytest.raises(RegisteredModelGone):
        registry.model("again")
    # MLflow stamps in milliseconds: the model made again must not share the first's.
    deadline = time.monotonic() + 5
    while int(time.time() * 1000) <= first and time.monotonic() < deadline:
        pass
    client.create_registered_model("again")
    assert registry.model("again").created_at > first
    registry.set_model_tag(NAME, "sigserve.compatibility", "exact")
    registry.set_alias(NAME, "serving", "1")
    registry.set_version_tag(NAME, "1", "sigserve.state", "live")
    seen = registry.model(NAME)
    assert seen.tags["sigserve.compatibility"] == "exact"
    assert seen.aliases == {"serving": "1"}
    v1 = next(v for v in registry.versions(NAME) if v.version == "1")
    assert v1.tags["sigserve.state"] == "live"


@pytest.mark.parametrize(
    ("python_env", "expected"),
    [
        ("python: 3.10\nbuild_dependencies:\n- pip\n", "3.10"),  # not the float 3.1
        ("python: 3.11.9\n", "3.11.9"),
        ("python: [unclosed\n", "3.9.1"),  # unreadable: the pyfunc flavor's
        ("build_dependencies: []\n", "3.9.1"),
    ],
)
def test_python_version_reading(python_env: str, expected: str) -> None:
    mlmodel = {"flavors": {"python_function": {"python_version": "3.9.1"}}}
    assert _python_version(python_env, mlmodel) == expected
    assert _python_version(None, {"flavors": {}}) is None


def test_an_mlmodel_mlflow_cannot_read_is_a_permanent_error_of_that_version(
    store: dict[str, Any],
) -> None:
    mlmodel = _local_dir(store, "1") / "MLmodel"
    good = mlmodel.read_bytes()
    try:
        mlmodel.write_text("flavors: [unclosed\n  signature: {\n")
        with pytest.raises(VersionUnreadable, match="its MLmodel cannot be read") as exc:
            store["registry"].artifact(NAME, "1")
        # The parser's words (with the controller's temporary path) stay in the log.
        assert public_reason(exc.value) == "its MLmodel cannot be read by MLflow (ParserError)"
    finally:
        mlmodel.write_bytes(good)
    assert store["registry"].artifact(NAME, "1").signature is not None


@pytest.mark.parametrize(
    "source",
    [
        # Schemes MLflow 3.17's server lets through at registration: it checks http(s) hosts and
        # local paths, not s3/gs/wasbs (this store has no boto3: a fetch would raise its own
        # ImportError, so the refusal is seen to come before any fetch).
        "s3://someone-elses-bucket/model",
        "wasbs://models@else.blob.core.windows.net/model",
        # A copy of a real model's files, outside the allowed root: readable, and not read.
        "{tmp}/elsewhere",
        "{tmp}/artifacts/../elsewhere",
        "{tmp}/artifacts-elsewhere",
    ],
)
def test_a_location_outside_the_allowed_sources_is_refused_before_it_is_read(
    store: dict[str, Any], source: str
) -> None:
    client: MlflowClient = store["client"]
    copy = store["tmp"] / "elsewhere"
    if not copy.exists():
        shutil.copytree(_local_dir(store, "1"), copy)
        shutil.copytree(_local_dir(store, "1"), store["tmp"] / "artifacts-elsewhere")
    if not client.search_registered_models("name='elsewhere'"):
        client.create_registered_model("elsewhere")
    version = client.create_model_version("elsewhere", source.format(tmp=store["tmp"])).version
    with pytest.raises(SourceNotAllowed) as exc:
        store["registry"].artifact("elsewhere", str(version))
    assert public_reason(exc.value) == NOT_ALLOWED
    assert exc.value.location in str(exc.value)  # the log's detail says which
    # What the reconciler asks of a version read before (LocationPolicy): the same answer.
    assert not store["registry"].allows(exc.value.location)
    assert store["registry"].allows(str(_local_dir(store, "1")))


def test_by_default_only_the_servers_own_artifact_root_is_allowed(store: dict[str, Any]) -> None:
    # Experiment 0 says where the store's default root is (<root>/0); the fixture's
    # experiment put its artifacts under a root of its own, which the default does not allow.
    client: MlflowClient = store["client"]
    root = Path(client.get_experiment("0").artifact_location).parent
    default = Registry(store["uri"])
    with pytest.raises(SourceNotAllowed, match="under none of the allowed prefixes"):
        default.artifact(NAME, "1")
    with mlflow.start_run(experiment_id="0"):
        # Requirements said, as the fixture's versions do: inferring them loads the model in a
        # process of its own (seconds), and the test reads only where the files went.
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(),
                                       pip_requirements=[REQUIREMENT],
                                       registered_model_name="in_default_root")
    assert Path(client.get_model_version_download_uri(
        "in_default_root", str(info.registered_model_version))).is_relative_to(root)
    facts = default.artifact("in_default_root", str(info.registered_model_version))
    assert facts.signature is not None


@pytest.mark.parametrize("filename", ["MLmodel", "requirements.txt", "python_env.yaml"])
def test_a_file_past_the_cap_is_refused_by_its_listed_size(
    store: dict[str, Any], filename: str
) -> None:
    path = _local_dir(store, "1") / filename
    good = path.read_bytes()
    try:
        # Still a valid file of its kind: a comment makes it 2 MiB.
        path.write_bytes(good + b"\n#" + b"x" * (2 * MIB))
        with pytest.raises(ReadFailure) as exc:
            store["registry"].artifact(NAME, "1")
    finally:
        path.write_bytes(good)
    assert public_reason(exc.value) == f"its {filename} is larger than 1 MiB (2.0 MiB)"


def test_a_listing_that_understates_a_size_does_not_get_the_file_read_whole(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.entities import FileInfo
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    real = LocalArtifactRepository.list_artifacts

    def understated(self: Any, path: str | None = None) -> list[FileInfo]:
        return [FileInfo(f.path, f.is_dir, None if f.is_dir else 10) for f in real(self, path)]

    monkeypatch.setattr(LocalArtifactRepository, "list_artifacts", understated)
    path = _local_dir(store, "1") / "MLmodel"
    good = path.read_bytes()
    try:
        path.write_bytes(good + b"\n#" + b"x" * (3 * MIB))
        with pytest.raises(ReadFailure) as exc:
            store["registry"].artifact(NAME, "1")
    finally:
        path.write_bytes(good)
    assert public_reason(exc.value) == "its MLmodel is larger than 1 MiB (3.0 MiB)"


def test_the_facts_carry_every_file_of_the_artifact_with_its_size_and_hash(
    store: dict[str, Any],
) -> None:
    facts = store["registry"].artifact(NAME, "1")
    directory = _local_dir(store, "1")
    on_disk = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                     if p.is_file())
    assert facts.manifest is not None
    assert [f.path for f in facts.manifest] == on_disk
    assert "python_model.pkl" in on_disk  # the pickle is bound, not only the MLmodel
    for file in facts.manifest:
        data = (directory / file.path).read_bytes()
        assert (file.size, file.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    mlmodel = next(f for f in facts.manifest if f.path == "MLmodel")
    assert mlmodel.sha256 == facts.mlmodel_digest


def test_files_past_the_hash_limit_are_bound_by_size_without_being_read(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    fetched: list[str] = []
    real = LocalArtifactRepository.download_artifacts

    def recording(self: Any, artifact_path: str, dst_path: str | None = None) -> Any:
        fetched.append(artifact_path)
        return real(self, artifact_path, dst_path)

    monkeypatch.setattr(LocalArtifactRepository, "download_artifacts", recording)
    registry = Registry(store["uri"], artifact_sources=[str(store["tmp"] / "artifacts")],
                        hash_limit=100)
    facts = registry.artifact(NAME, "1")
    assert facts.manifest is not None
    pickle = next(f for f in facts.manifest if f.path == "python_model.pkl")
    assert pickle.size > 100 and pickle.sha256 is None
    assert "python_model.pkl" not in fetched


def test_the_listing_pages_through_every_model_with_its_fingerprint(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import controller.registry

    client: MlflowClient = store["client"]
    others = [f"listed-{i}" for i in range(5)]
    for name in others:
        client.create_registered_model(name, tags={"i": name})
    monkeypatch.setattr(controller.registry, "LISTING_PAGE", 2)  # three pages and more
    try:
        listing = store["registry"].listing()
        assert {NAME, *others} <= set(listing)  # with what other tests registered
        assert [v.version for v in listing[NAME].latest] == ["3"]
        assert listing["listed-4"].tags == (("i", "listed-4"),)
        assert store["registry"].model_names() == sorted(listing)
    finally:
        for name in others:
            client.delete_registered_model(name)


def test_a_version_at_a_location_read_before_is_read_as_its_mlmodel_alone(
    store: dict[str, Any],
) -> None:
    """Two versions of one logged model: the second is read as its MLmodel alone (its location
    known from its source, the facts kept by location and MLmodel digest); an MLmodel changed
    in place is read in full."""
    registry, client = store["registry"], store["client"]
    source = client.get_model_version(NAME, "1").source
    client.create_registered_model("same_artifact")
    for _ in range(2):
        client.create_model_version("same_artifact", source)
    reads: list[str] = []
    registry.on_read = reads.append
    uris: list[str] = []
    real_uri = registry._client.get_model_version_download_uri

    def uri(name: str, version: str) -> Any:
        uris.append(version)
        return real_uri(name, version)

    registry._client.get_model_version_download_uri = uri
    try:
        registry.versions("same_artifact")  # as a pass reads them: each version's source
        first = registry.artifact("same_artifact", "1")
        second = registry.artifact("same_artifact", "2")
        assert reads == ["versions", "artifact", "artifact_cached"]
        assert second == first
        assert uris == ["1"]  # the second's location is its source's, known from the first
        mlmodel = Path(first.source) / "MLmodel"
        original = mlmodel.read_bytes()
        mlmodel.write_bytes(original + b"# written again\n")
        try:
            third = registry.artifact("same_artifact", "2")
        finally:
            mlmodel.write_bytes(original)
        assert reads[-1] == "artifact"
        assert third.mlmodel_digest != first.mlmodel_digest
    finally:
        registry.on_read = None
        del registry._client.get_model_version_download_uri


@pytest.mark.parametrize(
    ("source", "kept"),
    [("models:/m-0123abcd", True), ("runs:/r1/model", True), ("s3://bucket/model", True),
     ("models:/other/3", False), ("models:/other@champion", False),
     ("Models:/other/3", False), ("MODELS:/other@champion", False)],
)
def test_only_sources_with_one_location_for_every_version_are_remembered(
    source: str, kept: bool
) -> None:
    """A ``models:/<name>@<alias>`` source was resolved when its version was created, and the
    alias may have moved since: each such version asks MLflow for its own location (its scheme
    read case-blind, as MLflow reads it)."""
    locations = Locations()
    locations.note("m", "1", source)
    locations.learn("m", "1", "/artifacts/1")
    locations.note("m", "2", source)
    assert (locations.known("m", "2") == "/artifacts/1") is kept


def test_reads_with_the_models_waiting_are_what_each_would_read_alone(
    store: dict[str, Any],
) -> None:
    """``name IN (...)`` against MLflow's own store: the waiting models' registered model and
    versions come with the first model's, and each is what a read of its own finds (a quote in
    a name included); a model not in the answer is gone."""
    from controller.registry_shared import SharedReads

    registry, client = store["registry"], store["client"]
    quoted = "it's shared"
    client.create_registered_model(quoted)
    client.create_model_version(quoted, client.get_model_version(NAME, "2").source)
    alone = {n: (registry.model(n), registry.versions(n)) for n in (NAME, quoted)}
    assert len(alone[quoted][1]) == 1
    shared = SharedReads(lambda: [quoted, "never_registered"])
    for name in (quoted, "never_registered"):
        shared.asked(name)
    reads: list[str] = []
    registry.shared, registry.on_read = shared, reads.append
    try:
        assert (registry.model(NAME), registry.versions(NAME)) == alone[NAME]
        assert (registry.model(quoted), registry.versions(quoted)) == alone[quoted]
        with pytest.raises(RegisteredModelGone):
            registry.model("never_registered")
    finally:
        registry.shared = registry.on_read = None
    assert reads == ["model_many", "versions_many", "model_shared", "versions_shared",
                     "model_shared"]


@pytest.mark.parametrize(
    ("code", "for_good"),
    [("PERMISSION_DENIED", True), ("UNAUTHENTICATED", True), ("ENDPOINT_NOT_FOUND", True),
     ("RESOURCE_CONFLICT", True), ("REQUEST_LIMIT_EXCEEDED", False),
     ("RESOURCE_EXHAUSTED", False), ("CANCELLED", False), ("TEMPORARILY_UNAVAILABLE", False),
     ("INTERNAL_ERROR", False)],
)
def test_a_write_refused_with_a_4xx_is_refused_for_good_but_a_rate_limit_is_not(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch, code: str, for_good: bool
) -> None:
    """What the write-back lane retries (RegistryUnavailable) and what it leaves until the model
    is decided anew (RegistryRefused): 4xx other than 408, 429 and 499 fail the same way again."""
    from mlflow.protos.databricks_pb2 import ErrorCode

    from controller.exceptions import RegistryRefused

    registry = store["registry"]

    def refuse(*args: Any) -> None:
        raise MlflowException("refused", error_code=ErrorCode.Value(code))

    monkeypatch.setattr(registry._client, "set_model_version_tag", refuse)
    monkeypatch.setattr(registry._client, "set_registered_model_alias", refuse)
    expected = RegistryRefused if for_good else RegistryUnavailable
    with pytest.raises(expected):
        registry.set_version_tag(NAME, "1", "sigserve.state", "live")
    with pytest.raises(expected):
        registry.set_alias(NAME, "serving", "1")


@pytest.mark.parametrize("source", ["models:/other/1", None])
def test_a_version_number_taken_again_by_an_unfixed_source_forgets_the_old_location(
    source: str | None,
) -> None:
    """A model deleted and registered again numbers from 1 anew: when the new v1's source has
    no one location (MLflow reads the scheme case-blind), the old v1's is not its."""
    locations = Locations()
    locations.note("m", "1", "/artifacts/old")
    locations.learn("m", "1", "/artifacts/old")
    locations.note("m", "1", source)
    assert locations.known("m", "1") is None


def test_a_model_registered_again_is_read_at_its_new_versions_location(
    store: dict[str, Any],
) -> None:
    """The reviewer's case against MLflow's store: m v1 from old/, m deleted, m again with v1
    from ``models:/other/1`` (other's v1 from new/): m v1 is at new/, not old/."""
    registry, client = store["registry"], store["client"]
    old, new = store["tmp"] / "artifacts" / "old", store["tmp"] / "artifacts" / "new"
    client.create_registered_model("reborn")
    client.create_model_version("reborn", str(old))
    registry.versions("reborn")
    assert registry._location("reborn", "1") == str(old)
    client.delete_registered_model("reborn")
    client.create_registered_model("reborn_other")
    client.create_model_version("reborn_other", str(new))
    client.create_registered_model("reborn")
    try:
        client.create_model_version("reborn", "models:/reborn_other/1")
        registry.versions("reborn")
        assert registry._location("reborn", "1") == str(new)
    finally:
        client.delete_registered_model("reborn")
        client.delete_registered_model("reborn_other")


def test_a_model_with_a_backslash_in_its_name_fails_no_other_models_pass(
    store: dict[str, Any],
) -> None:
    """MLflow refuses ``name IN ('ok', 'x\\')``: a model so named waiting in the queue is not
    read with the others, and its own reads find it (``name = "x\\"``)."""
    from controller.registry_shared import SharedReads

    registry, client = store["registry"], store["client"]
    source = client.get_model_version(NAME, "1").source
    names = ["slash\\", "mid\\dle"]
    for name in names:
        client.create_registered_model(name)
        client.create_model_version(name, source)
    shared = SharedReads(lambda: list(names))
    for name in names:
        shared.asked(name)
    registry.shared = shared
    try:
        assert sorted(v.version for v in registry.versions(NAME)) == ["1", "2", "3"]
        assert registry.model(NAME).created_at > 0
        for name in names:
            assert [v.version for v in registry.versions(name)] == ["1"]
            assert registry.model(name).created_at > 0
    finally:
        registry.shared = None
        for name in names:
            client.delete_registered_model(name)


def test_a_refused_read_of_many_is_read_again_alone(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any refusal of a filter of many names (one the controller cannot foresee) costs the pass
    a read of its own, never the pass."""
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from controller.registry_shared import SharedReads

    registry = store["registry"]
    real = registry._client.search_model_versions

    def refuse_many(filter_string: str, **kwargs: Any) -> Any:
        if "," in filter_string:
            raise MlflowException("ill-formed list", error_code=INVALID_PARAMETER_VALUE)
        return real(filter_string, **kwargs)

    monkeypatch.setattr(registry._client, "search_model_versions", refuse_many)
    shared = SharedReads(lambda: ["peer"])
    shared.asked("peer")
    registry.shared = shared
    try:
        assert sorted(v.version for v in registry.versions(NAME)) == ["1", "2", "3"]
    finally:
        registry.shared = None

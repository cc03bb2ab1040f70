"""The only module that talks to the MLflow registry.

MLflow's client raises its own exceptions for every kind of failure; here they become
``RegistryUnavailable`` (try again later) or ``RegisteredModelGone`` (stop trying), so the
worker can tell temporary from permanent without knowing MLflow.

``artifact`` reads what a version's artifacts say about it (signature, requirements, Python,
pickling) from the few small files next to its MLmodel, never the model itself.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import yaml

from controller.artifact_files import MAX_FILE_BYTES, Listing, list_files, read_file
from controller.artifact_manifest import build_manifest
from controller.artifact_sources import ArtifactSources, SourceNotAllowed, default_root
from controller.artifacts import ArtifactFacts
from controller.environment import ArtifactEnvironment, is_pickled
from controller.exceptions import (
    RegisteredModelGone,
    RegistryRefused,
    RegistryUnavailable,
)
from controller.read_reasons import REFUSAL_CODES, ReadFailure
from controller.registry_artifacts import (
    ArtifactCache,
    Locations,
    cached_facts,
    python_version,
)
from controller.registry_listing import ModelFingerprint, fingerprint, rest_page
from controller.registry_reads import ObservedModel as ObservedModel
from controller.registry_reads import ObservedVersion as ObservedVersion
from controller.registry_reads import observed_model, search_models, search_versions
from controller.registry_rest import RestGet
from controller.registry_shared import ManyRefused, SharedReads
from controller.registry_webhook import WEBHOOK_EVENTS as WEBHOOK_EVENTS  # the faults import it
from controller.registry_webhook import upsert_webhook
from wire.artifact_manifest import HASH_LIMIT

T = TypeVar("T")
V = TypeVar("V")
# Models per page of the listing: the most MLflow's REST API answers (max_results <= 1000).
LISTING_PAGE = 1000
# MLflow error codes that the same call will meet again: retrying cannot help.
PERMANENT_ERRORS = REFUSAL_CODES
# 4xx answers to a write that are worth retrying: a timeout, a rate limit, a cancelled request.
RETRIED_4XX = frozenset({408, 429, 499})
log = logging.getLogger(__name__)



class RegistryWriter(Protocol):
    """What the controller writes back to the registry (``controller.registry_sync``)."""

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None: ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...


class RegistryPort(RegistryWriter, Protocol):
    """The registry as the reconciler and the worker use it: the seam unit tests fill with a
    fake (``Registry`` is the real one)."""

    def model_names(self) -> list[str]: ...

    def listing(self) -> dict[str, ModelFingerprint]: ...

    def model(self, name: str) -> ObservedModel: ...

    def versions(self, name: str) -> list[ObservedVersion]: ...

    def artifact(self, name: str, version: str) -> ArtifactFacts: ...


class Registry:
    def __init__(
        self,
        tracking_uri: str,
        *,
        on_error: Callable[[str], None] | None = None,
        artifact_sources: Sequence[str] | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
        hash_limit: int = HASH_LIMIT,
        connections: int | None = None,
    ) -> None:
        # Told the kind of every failed call: "temporary", "permanent" or "gone" (a metric).
        self._on_error = on_error
        # None: the tracking server's own store, learned at the first read (ArtifactSources).
        self._sources = ArtifactSources(artifact_sources) if artifact_sources is not None else None
        self._max_file_bytes = max_file_bytes
        # Files up to this size are hashed into the version's manifest, larger ones sized only.
        self._hash_limit = hash_limit
        # Versions of one logged model are read as their MLmodel alone (registry_artifacts).
        self.artifacts = ArtifactCache()
        self._locations = Locations()
        # Told each read the passes make ("model", "versions", "listing", "artifact", and
        # "artifact_cached" for a read as MLmodel alone): the reads-per-decision metric.
        self.on_read: Callable[[str], None] | None = None
        # Set by the worker: versions read with the models waiting in its queue
        # (controller/registry_shared.py); None: each model's alone.
        self.shared: SharedReads | None = None
        # MLflow's own retries back off for minutes; the worker retries with its own backoff.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        if connections is not None:
            # MLflow's requests pool keeps 10 connections to the server; asked for more at once
            # (the passes and the write-back lane), urllib3 opens one per request past it and
            # drops it after ("Connection pool is full"). Read once, at the first request.
            os.environ.setdefault("MLFLOW_HTTP_POOL_MAXSIZE", str(connections))
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def _call(self, fn: Callable[[], T], *, model: str | None = None, write: bool = False) -> T:
        from mlflow.exceptions import MlflowException

        try:
            return fn()
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST" and model is not None:
                self._failed("gone")
                raise RegisteredModelGone(model) from exc
            # A write the registry answers with a 4xx other than a timeout or a rate limit
            # fails the same way again (the write-back lane then waits for a new decision).
            status = int(exc.get_http_status_code())  # type: ignore[no-untyped-call]
            refused = write and 400 <= status < 500 and status not in RETRIED_4XX
            if exc.error_code in PERMANENT_ERRORS or refused:
                self._failed("permanent")
                raise RegistryRefused(f"{exc.error_code}: {exc.message}"[:500]) from exc
            self._failed("temporary")
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc.message}") from exc
        except OSError as exc:  # requests' errors are OSErrors
            self._failed("temporary")
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _failed(self, kind: str) -> None:
        if self._on_error is not None:
            self._on_error(kind)

    def _read(self, kind: str) -> None:
        if self.on_read is not None:
            self.on_read(kind)

    def ping(self) -> None:
        self._call(lambda: self._client.search_registered_models(max_results=1))

    def model_names(self) -> list[str]:
        return list(self.listing())

    def listing(self) -> dict[str, ModelFingerprint]:
        """Every registered model's name and fingerprint (``controller.registry_listing``).

        Paged by offset (MLflow's page token), so a model created or deleted while the pages
        are read can shift one name past a page boundary: it is missed by this listing (the
        resync treats it as unlisted or unseen, which costs a pass, never a decision) and
        seen by the next.
        """

        def fetch() -> dict[str, ModelFingerprint]:
            rest = self._rest
            found: dict[str, ModelFingerprint] = {}
            token: str | None = None
            while rest is not None:
                prints, token = rest_page(rest, LISTING_PAGE, token)
                found.update(prints)
                if not token:
                    return found
            while True:
                page = self._client.search_registered_models(
                    max_results=LISTING_PAGE, page_token=token
                )
                for m in page:
                    found[str(m.name)] = fingerprint(m)
                token = page.token
                if not token:
                    return found

        self._read("listing")
        return self._call(fetch)

    @functools.cached_property
    def _rest(self) -> RestGet | None:
        """Reads as JSON (``controller.registry_rest``) when the registry is a REST server."""
        return RestGet.of(self._client)

    def versions(self, name: str) -> list[ObservedVersion]:
        # The model's existence is model()'s to tell (RegisteredModelGone): the reconciler asks
        # it first, so no second get_registered_model here.
        def read(names: list[str]) -> dict[str, list[ObservedVersion]]:
            return search_versions(self._client, names, self._locations.note, self._rest)

        def many(names: list[str]) -> dict[str, list[ObservedVersion]]:
            return self._many(lambda: read(names))

        return self._shared("versions", name, lambda one: read([one])[one], many, list)

    def model(self, name: str) -> ObservedModel:
        """The registered model's creation time, aliases and tags, in one call.

        A model deleted and registered again under the same name gets a new creation time,
        which is how the caller tells the new model from the old one's leftovers.
        """
        def one(single: str) -> ObservedModel | None:
            return observed_model(self._client.get_registered_model(single))

        def many(names: list[str]) -> dict[str, ObservedModel | None]:
            return dict(self._many(lambda: search_models(self._client, names, self._rest)))

        found: ObservedModel | None = self._shared("model", name, one, many, lambda: None)
        if found is None:  # not in the answer of a read of many: deleted
            self._failed("gone")
            raise RegisteredModelGone(name)
        return found

    @staticmethod
    def _many(read: Callable[[], T]) -> T:
        """A read of many models, a refusal of it told apart (``ManyRefused``): what the
        registry refuses in a filter of many names may be another model's name."""
        from mlflow.exceptions import MlflowException

        try:
            return read()
        except MlflowException as exc:
            if exc.error_code in PERMANENT_ERRORS:
                raise ManyRefused(exc.error_code) from exc
            raise

    def _shared(self, kind: str, name: str, one: Callable[[str], V],
                many: Callable[[list[str]], dict[str, V]], empty: Callable[[], V]) -> V:
        """``one(name)``, or through the worker's shared reads (``registry_shared``); the read
        counted by how it was made (``on_read``)."""
        shared = self.shared
        if shared is None:
            self._read(kind)
            return self._call(lambda: one(name), model=name)
        found, how = self._call(lambda: shared.read(kind, name, one, many, empty), model=name)
        self._read(kind if how == "one" else f"{kind}_{how}")
        return found

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._call(
            lambda: self._client.set_model_version_tag(name, version, key, value), model=name,
            write=True,
        )

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self._call(lambda: self._client.set_registered_model_tag(name, key, value), model=name)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._call(
            lambda: self._client.set_registered_model_alias(name, alias, version), model=name,
            write=True,
        )

    def delete_alias(self, name: str, alias: str) -> None:
        # A rollout's ``candidate`` alias is taken away when the rollout ends.
        self._call(lambda: self._client.delete_registered_model_alias(name, alias), model=name)

    def artifact(self, name: str, version: str) -> ArtifactFacts:
        """What the version's artifacts say about it (the registry itself holds none of it).

        Only MLmodel, requirements.txt and python_env.yaml are read, each alone and each within
        ``max_file_bytes`` (``controller.artifact_files``): the model directory can hold
        gigabytes of weights. Every file is listed, and those up to ``hash_limit`` hashed, into
        the manifest the version is bound to (``controller.artifact_manifest``). The location
        is checked against the allowed artifact sources (``controller.artifact_sources``)
        before anything of it is read. The two environment
        files are optional.
        """

        def fetch() -> ArtifactFacts:
            from mlflow.models import Model
            from mlflow.store.artifact.artifact_repository_registry import (
                get_artifact_repository,
            )

            location = self._location(name, version)
            repo = get_artifact_repository(location, tracking_uri=self.tracking_uri)
            cached = cached_facts(self.artifacts, repo, location, self._max_file_bytes)
            if cached is not None:
                self._read("artifact_cached")
                return cached
            self._read("artifact")
            listing = list_files(repo)
            if "MLmodel" not in listing.files:
                self._not_a_model(name, version, location, listing)
            cap = self._max_file_bytes
            with tempfile.TemporaryDirectory() as tmp:
                raw = read_file(repo, "MLmodel", listing.files["MLmodel"], cap, tmp)
                try:
                    mlmodel = yaml.safe_load(raw)
                    signature = Model.from_dict(mlmodel).signature
                except Exception as exc:
                    # The file is there but is not an MLmodel MLflow can read: no retry helps.
                    raise ReadFailure(
                        f"its MLmodel cannot be read by MLflow ({type(exc).__name__})",
                        f"its MLmodel cannot be read ({type(exc).__name__}: {exc})"[:500],
                    ) from None
                read = {"MLmodel": raw} | {
                    f: read_file(repo, f, listing.files[f], cap, tmp)
                    for f in ("requirements.txt", "python_env.yaml")
                    if f in listing.files
                }
            texts = {f: data.decode("utf-8", "replace") for f, data in read.items()}
            manifest = build_manifest(repo, read=read, hash_limit=self._hash_limit)
            mlmodel = mlmodel if isinstance(mlmodel, dict) else {}
            requirements = texts.get("requirements.txt")
            facts = ArtifactFacts(
                source=location,
                mlmodel_digest=hashlib.sha256(raw).hexdigest(),
                manifest=tuple(manifest),
                signature=dict(signature.to_dict()) if signature is not None else None,
                environment=ArtifactEnvironment(
                    requirements=requirements.splitlines() if requirements is not None else None,
                    python_version=python_version(texts.get("python_env.yaml"), mlmodel),
                    pickled=is_pickled(mlmodel),
                ),
            )
            self.artifacts.keep(facts)
            return facts

        return self._call(fetch, model=name)

    def _location(self, name: str, version: str) -> str:
        """Where the version's artifacts are, once found allowed (else ``SourceNotAllowed``).

        A ``runs:/`` download URI is resolved here, so the location checked is the location
        read and the one serving is told to download, not a pointer resolved again later.
        """
        from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

        location = self._locations.known(name, version)  # its source's, read before
        if location is None:
            location = str(self._client.get_model_version_download_uri(name, version))
            if RunsArtifactRepository.is_runs_uri(location):  # type: ignore[no-untyped-call]
                location = RunsArtifactRepository.get_underlying_uri(location, self.tracking_uri)
            self._locations.learn(name, version, location)
        self._allowed().check(location)
        return location

    def allows(self, location: str) -> bool:
        """Whether ``location`` is an allowed artifact source now (``LocationPolicy``)."""
        try:
            self._call(self._allowed).check(location)
        except SourceNotAllowed:
            return False
        return True

    def _allowed(self) -> ArtifactSources:
        if self._sources is None:
            self._sources = ArtifactSources.default(self.tracking_uri, self._default_root())
            log.info("artifact sources allowed: %s", ", ".join(self._sources.prefixes) or "none")
        return self._sources

    def _default_root(self) -> str | None:
        """The server's default artifact root (``default_root``), None when it cannot tell."""
        from mlflow.exceptions import MlflowException

        try:
            return default_root(str(self._client.get_experiment("0").artifact_location))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST" and exc.error_code not in (
                PERMANENT_ERRORS
            ):
                raise  # temporary: _call says so, and the next read learns it
            log.warning("the default artifact root cannot be read (%s); only "
                        "SIGSERVE_ARTIFACT_SOURCES can allow it", exc.error_code)
            return None

    def _not_a_model(self, name: str, version: str, location: str, listing: Listing) -> None:
        """Raise for a location without an MLmodel: gone if the version was deleted meanwhile
        (MLflow lists a deleted location as empty), else ``ReadFailure``.

        A version whose location holds no MLmodel was registered from something that is not
        an MLflow model: no retry helps, it is quarantined, and the rest of its model goes on
        (docs/architecture.md, "The gate").
        """
        self._client.get_model_version(name, version)  # RESOURCE_DOES_NOT_EXIST: gone
        listed = listing.names
        holds = ", ".join(listed[:8]) + (", ..." if len(listed) > 8 else "")
        raise ReadFailure(
            f"no MLmodel file at {location}: this is not an MLflow model; log it with "
            "mlflow.<flavor>.log_model (mlflow.pyfunc.log_model, mlflow.sklearn.log_model, ...) "
            "and register what that logged"
            + (f" (the source holds: {holds})" if listed else " (the source is empty)")
        )

    def ensure_webhook(self, name: str, url: str, secret: str) -> str:
        """Create or update the controller's webhook; returns its id. Safe to repeat."""
        return self._call(lambda: upsert_webhook(self._client, name, url, secret))

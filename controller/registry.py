"""The only module that talks to the MLflow registry.

MLflow's client raises its own exceptions for every kind of failure; here they become
``RegistryUnavailable`` (try again later) or ``RegisteredModelGone`` (stop trying), so the
worker can tell temporary from permanent without knowing MLflow.

``artifact`` reads what a version's artifacts say about it (signature, requirements, Python,
pickling) from the few small files next to its MLmodel, never the model itself.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

from controller.artifacts import ArtifactFacts
from controller.environment import ArtifactEnvironment, is_pickled
from controller.exceptions import (
    RegisteredModelGone,
    RegistryRefused,
    RegistryUnavailable,
    VersionUnreadable,
)

T = TypeVar("T")
# MLflow error codes that the same call will meet again: retrying cannot help.
PERMANENT_ERRORS = frozenset(
    {
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "INVALID_PARAMETER_VALUE",
        "BAD_REQUEST",
        "INVALID_STATE",
    }
)

WEBHOOK_EVENTS: list[Any] = [
    "registered_model.created",
    "model_version.created",
    "model_version_tag.set",
    "model_version_tag.deleted",
    "model_version_alias.created",
    "model_version_alias.deleted",
]


@dataclass(frozen=True)
class ObservedModel:
    created_at: int
    aliases: dict[str, str]
    tags: dict[str, str]


@dataclass(frozen=True)
class ObservedVersion:
    version: str
    status: str
    source: str | None
    # The version's tags as the registry holds them (the controller writes ``sigserve.*``).
    tags: dict[str, str] = field(default_factory=dict)
    # When the registry created it (ms since the epoch, the registry's clock).
    created_at: int | None = None

    @property
    def ready(self) -> bool:
        return self.status == "READY"


def _python_version(python_env_path: Path | None, mlmodel: dict[str, Any]) -> str | None:
    """The Python the version was saved with: python_env.yaml, else the pyfunc flavor's."""
    if python_env_path is not None:
        # BaseLoader keeps scalars as strings (safe_load reads a hand-written "python: 3.10" as
        # the float 3.1); it builds only str/list/dict, so it is as safe as safe_load.
        text = python_env_path.read_text(encoding="utf-8", errors="replace")
        try:
            env = yaml.load(text, Loader=yaml.BaseLoader)  # noqa: S506
        except yaml.YAMLError:
            # Not worth failing the whole read over: MLflow itself never reads this file to
            # load the model, it only builds environments from it.
            env = None
        if isinstance(env, dict) and isinstance(env.get("python"), str):
            return str(env["python"])
    flavors = mlmodel.get("flavors")
    pyfunc = flavors.get("python_function") if isinstance(flavors, dict) else None
    version = pyfunc.get("python_version") if isinstance(pyfunc, dict) else None
    return str(version) if version else None


def _millis(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and value > 0 else None


class RegistryWriter(Protocol):
    """What the controller writes back to the registry (``controller.registry_sync``)."""

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None: ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...


class RegistryPort(RegistryWriter, Protocol):
    """The registry as the reconciler and the worker use it: the seam unit tests fill with a
    fake (``Registry`` is the real one)."""

    def model_names(self) -> list[str]: ...

    def model(self, name: str) -> ObservedModel: ...

    def versions(self, name: str) -> list[ObservedVersion]: ...

    def artifact(self, name: str, version: str) -> ArtifactFacts: ...


class Registry:
    def __init__(
        self, tracking_uri: str, *, on_error: Callable[[str], None] | None = None
    ) -> None:
        # Told the kind of every failed call: "temporary", "permanent" or "gone" (a metric).
        self._on_error = on_error
        # MLflow's own retries back off for minutes; the worker retries with its own backoff.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def _call(self, fn: Callable[[], T], *, model: str | None = None) -> T:
        from mlflow.exceptions import MlflowException

        try:
            return fn()
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST" and model is not None:
                self._failed("gone")
                raise RegisteredModelGone(model) from exc
            if exc.error_code in PERMANENT_ERRORS:
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

    def ping(self) -> None:
        self._call(lambda: self._client.search_registered_models(max_results=1))

    def model_names(self) -> list[str]:
        def fetch() -> list[str]:
            names: list[str] = []
            token: str | None = None
            while True:
                page = self._client.search_registered_models(max_results=500, page_token=token)
                names.extend(m.name for m in page)
                token = page.token
                if not token:
                    return names

        return self._call(fetch)

    def versions(self, name: str) -> list[ObservedVersion]:
        def fetch() -> list[ObservedVersion]:
            # The model's existence is model()'s to tell (RegisteredModelGone): the reconciler
            # asks it first, so no second get_registered_model here.
            escaped = name.replace("'", "\\'")
            found: list[ObservedVersion] = []
            token: str | None = None
            while True:
                page = self._client.search_model_versions(
                    f"name='{escaped}'", max_results=200, page_token=token
                )
                found.extend(
                    ObservedVersion(
                        version=str(v.version),
                        status=str(v.status),
                        source=v.source,
                        tags={str(k): str(t) for k, t in (v.tags or {}).items()},
                        created_at=_millis(v.creation_timestamp),
                    )
                    for v in page
                )
                token = page.token
                if not token:
                    return found

        return self._call(fetch, model=name)

    def model(self, name: str) -> ObservedModel:
        """The registered model's creation time, aliases and tags, in one call.

        A model deleted and registered again under the same name gets a new creation time,
        which is how the caller tells the new model from the old one's leftovers.
        """

        def fetch() -> ObservedModel:
            m = self._client.get_registered_model(name)
            return ObservedModel(
                created_at=int(m.creation_timestamp),
                aliases={str(k): str(v) for k, v in (m.aliases or {}).items()},
                tags={str(k): str(v) for k, v in (m.tags or {}).items()},
            )

        return self._call(fetch, model=name)

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._call(
            lambda: self._client.set_model_version_tag(name, version, key, value), model=name
        )

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self._call(lambda: self._client.set_registered_model_tag(name, key, value), model=name)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._call(
            lambda: self._client.set_registered_model_alias(name, alias, version), model=name
        )

    def artifact(self, name: str, version: str) -> ArtifactFacts:
        """What the version's artifacts say about it (the registry itself holds none of it).

        Only MLmodel, requirements.txt and python_env.yaml are downloaded, each alone: the
        model directory can hold gigabytes of weights. The two environment files are optional.
        """

        def fetch() -> ArtifactFacts:
            from mlflow.models import Model

            source = str(self._client.get_model_version_download_uri(name, version))
            with tempfile.TemporaryDirectory() as tmp:
                mlmodel_path = self._download_mlmodel(name, version, source, tmp)
                raw = mlmodel_path.read_bytes()
                try:
                    signature = Model.load(str(mlmodel_path)).signature
                    mlmodel = yaml.safe_load(raw)
                except Exception as exc:
                    # The file is there but is not an MLmodel MLflow can read: no retry helps.
                    raise VersionUnreadable(
                        f"its MLmodel cannot be read ({type(exc).__name__}: {exc})"[:500]
                    ) from None
                mlmodel = mlmodel if isinstance(mlmodel, dict) else {}
                requirements_path = self._download_optional(source, "requirements.txt", tmp)
                python_env_path = self._download_optional(source, "python_env.yaml", tmp)
                requirements = (
                    requirements_path.read_text(encoding="utf-8", errors="replace").splitlines()
                    if requirements_path is not None
                    else None
                )
                python_version = _python_version(python_env_path, mlmodel)
            return ArtifactFacts(
                source=source,
                mlmodel_digest=hashlib.sha256(raw).hexdigest(),
                signature=dict(signature.to_dict()) if signature is not None else None,
                environment=ArtifactEnvironment(
                    requirements=requirements,
                    python_version=python_version,
                    pickled=is_pickled(mlmodel),
                ),
            )

        return self._call(fetch, model=name)

    def _download(self, source: str, filename: str, dst: str) -> Path:
        from mlflow.artifacts import download_artifacts

        return Path(
            download_artifacts(
                artifact_uri=f"{source.rstrip('/')}/{filename}",
                dst_path=dst,
                tracking_uri=self.tracking_uri,
            )
        )

    def _download_mlmodel(self, name: str, version: str, source: str, dst: str) -> Path:
        """The version's MLmodel; ``VersionUnreadable`` when its artifacts have none.

        MLflow says "not found" for a missing file as it does for a deleted version, so a failed
        download is told apart: the version is read again from the registry (deleted: its
        RESOURCE_DOES_NOT_EXIST goes to ``_call``, the model or version is gone), then its
        source is listed. A version whose source holds no MLmodel was registered from
        something that is not an MLflow model: no retry helps, it is quarantined, and the rest
        of its model goes on (docs/architecture.md, "The gate").
        """
        from mlflow.artifacts import list_artifacts
        from mlflow.exceptions import MlflowException

        try:
            return self._download(source, "MLmodel", dst)
        except MlflowException:
            self._client.get_model_version(name, version)
            listed = [
                posixpath.basename(f.path)
                for f in list_artifacts(artifact_uri=source, tracking_uri=self.tracking_uri)
            ]
            if "MLmodel" in listed:
                raise  # it is there: this download failed for another reason
        holds = ", ".join(sorted(listed)[:8]) + (", ..." if len(listed) > 8 else "")
        raise VersionUnreadable(
            f"no MLmodel file at {source}: this is not an MLflow model; log it with "
            "mlflow.<flavor>.log_model (mlflow.pyfunc.log_model, mlflow.sklearn.log_model, ...) "
            "and register what that logged"
            + (f" (the source holds: {holds})" if listed else " (the source is empty)")
        )

    def _download_optional(self, source: str, filename: str, dst: str) -> Path | None:
        """The file, or None when the version's artifacts do not have it.

        A missing file is RESOURCE_DOES_NOT_EXIST from a local artifact store but
        INTERNAL_ERROR with a "404" in the text from an HTTP one (S3 and others differ again),
        so "not found" is decided by listing the directory instead: absent only when the
        listing shows MLmodel (the directory is there) and not this file. Any other failure
        goes to ``_call``.
        """
        from mlflow.artifacts import list_artifacts
        from mlflow.exceptions import MlflowException

        try:
            return self._download(source, filename, dst)
        except MlflowException:
            listed = {
                posixpath.basename(f.path)
                for f in list_artifacts(artifact_uri=source, tracking_uri=self.tracking_uri)
                if not f.is_dir
            }
            if "MLmodel" in listed and filename not in listed:
                return None
            raise

    def ensure_webhook(self, name: str, url: str, secret: str) -> str:
        """Create or update the controller's webhook; returns its id. Safe to repeat."""

        def upsert() -> str:
            existing = [w for w in self._client.list_webhooks(max_results=1000) if w.name == name]
            if existing:
                hook = self._client.update_webhook(
                    existing[0].webhook_id,
                    url=url,
                    events=list(WEBHOOK_EVENTS),
                    secret=secret,
                    status="ACTIVE",
                )
                for extra in existing[1:]:
                    self._client.delete_webhook(extra.webhook_id)
            else:
                hook = self._client.create_webhook(
                    name=name, url=url, events=list(WEBHOOK_EVENTS), secret=secret
                )
            return str(hook.webhook_id)

        return self._call(upsert)

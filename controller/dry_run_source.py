"""What a dry run reads: the artifact named by a URI that is not a registered version (yet).

``sigserve check`` asks about a ``runs:/<run id>/<path>`` (what ``register_model`` is given),
a ``models:/<name>/<version>`` or ``models:/<name>@<alias>``, a ``models:/<model id>`` (an
MLflow 3 logged model), an artifact location, or a model directory on the user's disk, whose
small files the CLI sends (``LocalFiles``). Each is read exactly as the gate reads a version
(``Registry.artifact``: the artifact-source allowlist, the size caps, the same parse), so the
verdict is the one registering it would get. docs/architecture.md, "Before registering: a dry
run".

``runs:/`` is resolved as MLflow 3.17's ``register_model`` resolves it: the run's own artifacts
at the path when they hold an MLmodel, else the model that run logged under that name, so the
location checked is the one a registered version would have.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from typing_extensions import override

from controller.artifact_files import Listing, list_files
from controller.artifact_sources import SourceNotAllowed
from controller.artifacts import ArtifactFacts
from controller.exceptions import InvalidRequest, RegisteredModelGone, RegistryRefused
from controller.read_reasons import ReadFailure
from controller.registry import Registry, T

SOURCES = (
    "give runs:/<run id>/<path>, models:/<name>/<version>, models:/<name>@<alias>, "
    "models:/<model id> or an artifact location (a model directory on your disk: "
    "`sigserve check` sends its files)"
)
# What the gate's read would name a version; a dry run has no number yet.
_CANDIDATE = "candidate"
# The registry's refusals that mean "no such thing" for a malformed id (controller.registry
# words a refusal "<error code>: <message>").
_NOT_THERE = ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")


@dataclass(frozen=True)
class LocalFiles:
    """The files of a model directory the controller cannot read, as the CLI sent them."""

    mlmodel: str
    requirements: str | None = None
    python_env: str | None = None


class CandidateRegistry(Registry):
    """``Registry.artifact``'s read, pointed at a location a dry run names.

    A subclass so that the read is the gate's own, not a copy of it; ``_location`` is the one
    step that differs (the location is given rather than asked of the registry).
    """

    # The location the next read is of, and whether the allowlist decides it (files a client
    # sent, held in a directory of the controller's own, are not a location anyone chose).
    _at: str | None = None
    _check_at: bool = True

    def candidate(self, name: str, source: str) -> ArtifactFacts:
        """The facts of ``source``; ``InvalidRequest`` (field ``source``) when it names nothing
        an MLflow model can be read from; the read's own errors as the gate's read raises them.
        """
        if source.startswith("models:/"):
            return self._model_uri(name, source)
        if source.startswith("runs:/"):
            return self._at_location(name, self._run_location(source))
        if "://" not in source and not source.startswith(("/", "mlflow-artifacts:")):
            raise InvalidRequest("source", f"{source!r} is not a URI: {SOURCES}")
        return self._at_location(name, source)

    def local_candidate(self, name: str, files: LocalFiles) -> ArtifactFacts:
        with tempfile.TemporaryDirectory(prefix="sigserve-check-") as tmp:
            for filename, text in (("MLmodel", files.mlmodel),
                                   ("requirements.txt", files.requirements),
                                   ("python_env.yaml", files.python_env)):  # fmt: skip
                if text is not None:
                    Path(tmp, filename).write_text(text, encoding="utf-8")
            return self._at_location(name, tmp, check=False)

    def _at_location(self, name: str, location: str, *, check: bool = True) -> ArtifactFacts:
        self._at, self._check_at = location, check
        try:
            return self.artifact(name, _CANDIDATE)
        finally:
            self._at = None

    @override
    def _location(self, name: str, version: str) -> str:
        if self._at is None:
            return super()._location(name, version)
        if self._check_at:
            self._allowed().check(self._at)
        return self._at

    @override
    def _not_a_model(self, name: str, version: str, location: str, listing: Listing) -> None:
        if self._at is None:
            super()._not_a_model(name, version, location, listing)
            return
        raise ReadFailure(
            "no MLmodel file there: this is not an MLflow model; log it with "
            "mlflow.<flavor>.log_model and check what that logged"
        )

    def _model_uri(self, checked: str, source: str) -> ArtifactFacts:
        # models:/<name>/<version>, models:/<name>@<alias>, models:/<model id>: MLflow's own
        # forms (stages and "latest" are not what a version is registered from).
        rest = source.removeprefix("models:/")
        name, slash, version = rest.partition("/")
        registered, at, alias = name.partition("@")
        if not name or "/" in version or (slash and not version.isdigit()) or (at and not alias):
            raise InvalidRequest("source", f"{source!r} is not a models:/ URI: {SOURCES}")
        if not slash and not at:
            logged = self._lookup(source, lambda: self._client.get_logged_model(name))
            return self._at_location(checked, str(logged.artifact_location))
        if at:
            found = self._lookup(
                source, lambda: self._client.get_model_version_by_alias(registered, alias)
            )
            version = str(found.version)
        return self._lookup(source, lambda: self.artifact(registered, version))

    def _lookup(self, source: str, fn: Callable[[], T]) -> T:
        """``fn``'s answer; what the tracking server does not have is the source's fault."""
        try:
            return self._call(fn, model=source)
        except (RegisteredModelGone, RegistryRefused) as exc:
            if isinstance(exc, RegistryRefused) and not str(exc).startswith(_NOT_THERE):
                raise  # permissions: the registry's refusal, as any other call's
            raise InvalidRequest("source", f"{source!r}: the tracking server has no such "
                                 "run, model or version") from None  # fmt: skip

    def _run_location(self, source: str) -> str:
        """Where ``register_model(source)`` would point the version, as it decides it."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

        try:
            run_id, path = RunsArtifactRepository.parse_runs_uri(source)  # type: ignore[no-untyped-call]
        except Exception:
            raise InvalidRequest("source", f"{source!r} is not a runs:/ URI: {SOURCES}") from None
        if not path:
            raise InvalidRequest("source", f"{source!r} names a run but no path in it: {SOURCES}")
        run = self._lookup(source, lambda: self._client.get_run(run_id))
        underlying = self._call(
            lambda: RunsArtifactRepository.get_underlying_uri(source, self.tracking_uri)
        )
        allowed = self.allows(underlying)
        if allowed:
            repo = get_artifact_repository(underlying, tracking_uri=self.tracking_uri)
            if "MLmodel" in self._call(lambda: list_files(repo)).files:
                return underlying
        experiment = run.info.experiment_id
        escaped = path.replace("'", "\\'")
        logged = self._call(lambda: self._client.search_logged_models(
            experiment_ids=[experiment], filter_string=f"name = '{escaped}'", max_results=100,
        ))  # fmt: skip
        mine = [m for m in logged if m.source_run_id == run_id]
        if len(mine) > 1:
            raise InvalidRequest("source", f"run {run_id!r} logged {len(mine)} models named "
                                 f"{path!r}; check models:/<model id> instead")  # fmt: skip
        if mine:
            return str(mine[0].artifact_location)
        if not allowed:
            raise SourceNotAllowed(underlying, "the run's artifact location")
        raise InvalidRequest("source", f"{source!r}: run {run_id!r} holds no MLflow model at "
                             f"{path!r} (nor logged a model of that name)")  # fmt: skip

"""Where a version's artifacts may be read from: an allowlist of artifact locations.

The controller reads ``{location}/MLmodel`` and the environment files with its own identity
and credentials, and serving later downloads the whole location. Whoever can register a
version chooses the location, and MLflow 3.17's server checks only some schemes at
registration (foreign-host http(s) and local paths, not s3, gs or wasbs; nothing on an older
server or one configured with ``MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES``). So a location
is read only when it lies under one of the allowed prefixes: by default the tracking server's
own store, configurable with ``SIGSERVE_ARTIFACT_SOURCES``. docs/security.md, "Artifact sources
and sizes".

A prefix matches by scheme, authority and whole path segments: ``s3://models/prod`` allows
``s3://models/prod/m-1/artifacts`` but not ``s3://models/production`` nor ``s3://other/prod``.
Locations with ``.`` or ``..`` segments (also percent-encoded), a query, a fragment, a
backslash or whitespace are never allowed: what they reach depends on who resolves them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from controller.read_reasons import NOT_ALLOWED, ReadFailure

log = logging.getLogger(__name__)

# Schemes whose URI names no location of its own (a run, a registered model): the controller
# resolves ``runs:/`` before the check; anything still in one of these is refused.
_POINTERS = frozenset({"runs", "models"})


@runtime_checkable
class LocationPolicy(Protocol):
    """A registry that tells whether a location is allowed now (``Registry`` is one): the
    reconciler reads again a version read from a location the allowlist no longer has."""

    def allows(self, location: str) -> bool: ...


class SourceNotAllowed(ReadFailure):
    """A version whose artifact location is under none of the allowed prefixes."""

    def __init__(self, location: str, why: str) -> None:
        super().__init__(NOT_ALLOWED, f"artifact location {location!r} is not allowed: {why}")
        self.location = location


@dataclass(frozen=True)
class _Location:
    scheme: str
    authority: str
    segments: tuple[str, ...]

    def under(self, prefix: _Location) -> bool:
        return (
            self.scheme == prefix.scheme
            and self.authority == prefix.authority
            and self.segments[: len(prefix.segments)] == prefix.segments
        )


def _location(uri: str) -> _Location:
    """``uri`` split for matching; ValueError for what no prefix may ever match."""
    if "\\" in uri or any(c.isspace() for c in uri):
        raise ValueError("it holds a backslash or whitespace")
    parts = urlsplit(uri)
    if parts.query or parts.fragment or uri.endswith(("?", "#")):
        raise ValueError("it has a query or a fragment")
    if not parts.scheme:
        # A local path, as a local artifact store hands it out.
        if not uri.startswith("/"):
            raise ValueError("a local path must be absolute")
        scheme, authority = "file", ""
    else:
        scheme, authority = parts.scheme.lower(), parts.netloc.lower()
        if scheme == "file" and authority == "localhost":
            authority = ""
    segments = tuple(unquote(s) for s in parts.path.split("/") if s)
    if any(s in (".", "..") or "/" in s for s in segments):
        raise ValueError("its path has a '.' or '..' segment (or an encoded '/')")
    return _Location(scheme, authority, segments)


def parse_sources(value: object) -> tuple[str, ...] | None:
    """``SIGSERVE_ARTIFACT_SOURCES`` read: prefixes separated by commas or whitespace (None
    when unset or empty: the default).

    For ``ControllerSettings`` (a ``BeforeValidator``): a prefix no location could match, or
    one that is not absolute, is refused at start (ValueError), not found out per version.
    """
    if value is None:
        return None
    items: Iterable[object] = value.replace(",", " ").split() if isinstance(value, str) else (
        value if isinstance(value, list | tuple) else [value]
    )
    prefixes = tuple(str(item).strip() for item in items if str(item).strip())
    if not prefixes:
        return None  # set but empty: the default, not "allow nothing" by a typo
    for prefix in prefixes:
        try:
            _location(prefix)
        except ValueError as exc:
            raise ValueError(f"artifact source {prefix!r}: {exc}") from None
        if urlsplit(prefix).scheme.lower() in _POINTERS:
            raise ValueError(f"artifact source {prefix!r}: {urlsplit(prefix).scheme}:/ URIs "
                             "name no location; give the store's own URI")
    return prefixes


def default_root(experiment_zero_location: str) -> str:
    """The server's default artifact root, from where it put the Default experiment.

    ``mlflow server`` creates experiment 0 at ``<--default-artifact-root>/0`` and no API moves
    it afterwards, so a registry writer cannot change what this says.
    """
    location = experiment_zero_location.rstrip("/")
    return location[: -len("/0")] if location.endswith("/0") else location


class ArtifactSources:
    """The allowed prefixes; ``check`` raises ``SourceNotAllowed`` for anything else."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        self.prefixes = tuple(prefixes)
        self._locations = [_location(p) for p in self.prefixes]

    @classmethod
    def default(cls, tracking_uri: str, root: str | None) -> ArtifactSources:
        """The tracking server's own store: ``mlflow-artifacts:`` URIs without a host (the
        server answers them from its ``--artifacts-destination``) when it is one over HTTP,
        and its default artifact root (``default_root``)."""
        prefixes: list[str] = []
        if urlsplit(tracking_uri).scheme.lower() in ("http", "https"):
            prefixes.append("mlflow-artifacts:")
        if root:
            try:
                _location(root)
                prefixes.append(root)
            except ValueError as exc:
                log.warning("the default artifact root %r cannot be an allowed artifact "
                            "source (%s); set SIGSERVE_ARTIFACT_SOURCES", root, exc)
        return cls(prefixes)

    def check(self, location: str) -> None:
        try:
            where = _location(location)
        except ValueError as exc:
            raise SourceNotAllowed(location, str(exc)) from None
        if where.scheme in _POINTERS:
            raise SourceNotAllowed(location, f"a {where.scheme}:/ URI names no location")
        if not any(where.under(prefix) for prefix in self._locations):
            allowed = ", ".join(self.prefixes) or "none"
            raise SourceNotAllowed(location, f"under none of the allowed prefixes ({allowed})")

"""Which version answers a request, decided from the routing table alone.

The version comes from the path (``/models/{name}/versions/{version}/...``), else from the
``serve_multiplexed_model_id`` header (also spelled ``serve-multiplexed-model-id``, as proxies
that drop underscores send it; the value is ``"2"`` or ``"name/2"``), else from the model's
pinned default. Only a ``live`` version bound to the artifact that was checked is ever
returned: unknown, pending and quarantined versions, and a live one whose entry lacks its
``source`` or ``mlmodel_digest``, raise before anything is loaded, so the app fails closed.

A load can take a while, and the table can change meanwhile: ``recheck`` asks the table then
held about the version a request resolved to, after its load and before its predict, so a
version quarantined or removed in between is never run (docs/architecture.md, "Fail closed").
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from serving.exceptions import (
    BadModelId,
    ModelUnavailable,
    NoDefaultVersion,
    NotReady,
    UnknownModel,
    UnknownVersion,
    VersionPending,
    VersionQuarantined,
    VersionUnbound,
)
from serving.model_ids import Artifact
from serving.model_ids import model_id as make_model_id
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState

MODEL_ID_HEADERS = ("serve_multiplexed_model_id", "serve-multiplexed-model-id")


@dataclass(frozen=True)
class Target:
    model: ModelEntry
    version: VersionEntry
    artifact: Artifact

    @cached_property
    def model_id(self) -> str:
        """The multiplexed model id, ``name/version@key``: a new artifact gets a new id.
        Made once per request (the model host asks for it several times)."""
        return make_model_id(self.model.name, self.version.version, self.artifact)


def table_or_not_ready(table: RoutingTable | None) -> RoutingTable:
    if table is None:
        raise NotReady("no routing table has reached this replica yet")
    return table


def find_model(table: RoutingTable | None, name: str) -> ModelEntry:
    model = table_or_not_ready(table).models.get(name)
    if model is None:
        raise UnknownModel(f"no model named {name!r} is registered for serving", model=name)
    return model


def header_version(name: str, headers: Mapping[str, str]) -> str | None:
    """The version named by the model-id header, if any; "name/2" must name this model."""
    value = next((headers[h] for h in MODEL_ID_HEADERS if headers.get(h)), None)
    if value is None:
        return None
    prefix, sep, version = value.strip().rpartition("/")
    if sep and prefix != name:
        raise BadModelId(f"the model id {value!r} names another model than {name!r}", model=name)
    return version or None


def resolve(table: RoutingTable | None, name: str, version: str | None) -> Target:
    model = find_model(table, name)
    if version is None:
        if model.default_version is None:
            raise NoDefaultVersion(
                f"model {name!r} has no default version yet; name one to call it", model=name
            )
        version = model.default_version
    entry = model.versions.get(version)
    if entry is None:
        raise UnknownVersion(
            f"model {name!r} has no version {version!r}", model=name, version=version
        )
    if entry.state == VersionState.PENDING:
        raise VersionPending(
            f"version {version} of {name!r} is still being checked", model=name, version=version
        )
    if entry.state == VersionState.QUARANTINED:
        raise VersionQuarantined(
            f"version {version} of {name!r} is quarantined: "
            + ("; ".join(entry.reasons) or "no reason recorded"),
            model=name,
            version=version,
            reasons=list(entry.reasons),
        )
    return Target(model, entry, checked_artifact(name, entry))


def recheck(table: RoutingTable | None, target: Target) -> None:
    """Raise what ``table`` answers for ``target``'s version unless it still serves it, live
    and on the same artifact: 404 removed, 409 quarantined, 503 pending or bound elsewhere.

    The version, not the default: a request that resolved the default keeps the version it
    resolved, if that is still live. A few dictionary lookups, for the request path.
    """
    name, version = target.model.name, target.version.version
    model = table.models.get(name) if table is not None else None
    entry = model.versions.get(version) if model is not None else None
    if entry is not None and (
        entry is target.version  # the table did not change: the common case, one comparison
        or (
            entry.state == VersionState.LIVE
            and entry.source == target.version.source
            and entry.mlmodel_digest == target.version.mlmodel_digest
            and entry.manifest == target.version.manifest
        )
    ):
        return
    resolve(table, name, version)  # raises the table's answer, but for another artifact:
    raise ModelUnavailable(
        f"version {version} of {name!r} was registered again while it loaded; try again",
        model=name,
        version=version,
    )


# The artifact of each table entry a request resolved to, by the entry's identity: entries are
# frozen, so its key (two SHA-256 digests) is made once per entry, not once per request. An
# entry's item goes when the entry does (a later table replaced it), before its id can be
# another object's.
_ARTIFACTS: dict[int, Artifact] = {}


def checked_artifact(name: str, entry: VersionEntry) -> Artifact:
    """The artifact a live version was decided on; without one there is nothing safe to load."""
    artifact = _ARTIFACTS.get(id(entry))
    if artifact is None:
        artifact = _artifact(name, entry)
        _ARTIFACTS[id(entry)] = artifact
        weakref.finalize(entry, _ARTIFACTS.pop, id(entry), None)
    return artifact


def _artifact(name: str, entry: VersionEntry) -> Artifact:
    if not entry.source or not entry.mlmodel_digest:
        raise VersionUnbound(
            f"version {entry.version} of {name!r} is live but the routing table names no "
            "checked artifact (source and MLmodel digest) for it",
            model=name,
            version=entry.version,
        )
    manifest = tuple(entry.manifest) if entry.manifest is not None else None
    return Artifact(entry.source, entry.mlmodel_digest, manifest, entry.environment)

"""The routing table: what the controller decided and the serving app obeys.

The controller publishes a new table, with a higher ``revision``, each time a decision changes.
The serving app answers only from the table it holds: a model or version missing from it is
unknown (404), a pending one is not ready (503), a quarantined one is refused (409). Nothing
outside the table is ever loaded, so the serving app fails closed.

Signatures travel in MLflow's own dict form (``ModelSignature.to_dict()``: ``inputs``,
``outputs`` and ``params`` as JSON strings), so both sides parse them with MLflow itself.

A decision is bound to an artifact, not to a label: each version carries the immutable
location of the artifact that was checked (``source``) and the SHA-256 of its ``MLmodel`` file
(``mlmodel_digest``). The serving app loads exactly that source and refuses an artifact whose
``MLmodel`` has another digest, so a version number reused by a model deleted and registered
again can never serve what nobody checked. A version read since manifests also carries
``manifest``: every file of the artifact with its size and, up to a limit, its SHA-256
(``wire.artifact_manifest``); the serving app refuses a download that differs from it in any
file, so a pickle or ``code/`` replaced after the check is refused as a changed ``MLmodel`` is.

Schema versions: 2 added ``source``, ``mlmodel_digest`` and ``warnings``; 3 added
``environment``, which a replica must understand to serve the version at all (read in its own
interpreter, a version built for an environment of its own may load and answer wrong). A replica
reads the schema versions in ``SCHEMAS_READ`` and refuses a table of any other (and backs off)
rather than guess at its meaning. It asks the controller for its own (``schema`` on the
long-poll); the controller answers ``for_schema``: the table itself to a replica of this schema
or a later one, and to one of schema 2 (which sends no ``schema``: every replica before 3) the
table with each version that has an environment of its own withheld, ``pending`` with the reason
and awaiting no proof, so such a replica answers 503 for those versions, never runs them in its
own interpreter, and serves everything else as before. The rule for both directions, and for
the next field of that kind: docs/architecture.md, "The routing table's schema".

A new optional field whose absence keeps the old meaning (``max_batch_size``, ``batch_wait_ms``,
``predict_timeout_s``, ``manifest``, ``awaiting_proof``, ``rollout``) does not change the schema
version: a replica that does not know it ignores it and serves as before (one that does not know
``awaiting_proof`` proves nothing, so a version waiting for a proof waits until one that does
takes the table; one that does not know ``rollout`` sends every request that names no version to
the default, which is where a rollout that ends leaves them).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from wire.artifact_manifest import ManifestFile

SCHEMA_VERSION = 3
# What a replica of this release takes: a controller of the release before answers schema 2.
SCHEMAS_READ = frozenset({2, 3})
# What a replica that sends no ``schema`` reads.
SCHEMA_UNSAID = 2


class VersionState(StrEnum):
    LIVE = "live"
    QUARANTINED = "quarantined"
    PENDING = "pending"


class EnvironmentSpec(BaseModel):
    """An environment of a version's own: where a version the shared serving environment cannot
    serve is proven and served (docs/architecture.md, "Environments of their own")."""

    model_config = ConfigDict(frozen=True)

    # SHA-256 hex of what the environment is built from (kind, the canonical requirement lines,
    # the Python minor): every version with the same needs shares one environment.
    digest: str
    # "layered": ``requirements`` installed with uv on top of the serving environment (Ray,
    # Serve, sigserve, its pandas and MLflow stay visible): for "one more package".
    # "isolated": a venv that inherits nothing, built from ``requirements`` alone, with the model
    # in a host process of its own: for another MLflow or pandas major.
    kind: Literal["layered", "isolated"]
    # The requirement lines the environment is built from, as pip reads them.
    requirements: list[str] = Field(default_factory=list)
    # Why the shared environment does not serve this version, for a person.
    reason: str = ""


class Rollout(BaseModel):
    """A candidate version taking a share of a model's traffic (docs/architecture.md,
    "Rollouts"). Requests that name a version are never rerouted."""

    model_config = ConfigDict(frozen=True)

    # This rollout: replicas report their counts per id, so an earlier rollout's counts are
    # never summed into this one's.
    id: str
    candidate: str
    # The share of the requests that name no version the candidate answers (0 during a shadow).
    weight: float = Field(ge=0, le=1)
    # The share of the default's requests also sent to the candidate, off the client's path, the
    # two answers compared.
    shadow: float = Field(default=0, ge=0, le=1)
    step: int = Field(default=0, ge=0)
    # How a shadow compares answers: floats equal within rel_tol or abs_tol, embeddings (lists
    # of floats) by cosine similarity at least min_cosine, everything else exactly.
    rel_tol: float = Field(default=1e-6, ge=0)
    abs_tol: float = Field(default=1e-9, ge=0)
    min_cosine: float = Field(default=0.999, ge=-1, le=1)


class VersionEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: str
    state: VersionState
    reasons: list[str] = Field(default_factory=list)
    # The version's own signature, None when it was logged without one.
    signature: dict[str, str | None] | None = None
    # Where the checked artifact lives (an artifact URI MLflow can download) and the SHA-256
    # hex digest of its MLmodel file. Both are set for every live version.
    source: str | None = None
    mlmodel_digest: str | None = None
    # Every file of that artifact (path, size, SHA-256 up to a limit). None for a version
    # decided before manifests: serving then checks the MLmodel digest alone.
    manifest: list[ManifestFile] | None = None
    # Things a person should know that did not block the version (say, a minor version
    # difference of a package it requires).
    warnings: list[str] = Field(default_factory=list)
    # A pending version that passed every check and waits for its proof: a replica may load
    # it (the bound artifact, as for a live one), call it on its own input example and report
    # the outcome (``serving.proofs``). Clients still get its 503. False: pending as before,
    # never loaded.
    awaiting_proof: bool = False
    # Where the version is proven and served: None, the shared serving environment.
    environment: EnvironmentSpec | None = None


class ModelEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    default_version: str | None
    # The contract: the API the model's clients were promised, kept across pins, so not always
    # the default version's signature (docs/architecture.md, "The contract").
    contract: dict[str, str | None] | None = None
    versions: dict[str, VersionEntry] = Field(default_factory=dict)
    # Records per predict call for this model's batches, and how long a batch that is not full
    # may wait for more (the model tags ``sigserve.max_batch_size`` and
    # ``sigserve.batch_wait_ms``); None: the serving app's defaults.
    max_batch_size: int | None = Field(default=None, ge=1)
    batch_wait_ms: float | None = Field(default=None, ge=0)
    # How long one predict call may take (the model tag ``sigserve.predict_timeout_s``); None:
    # the serving app's default.
    predict_timeout_s: float | None = Field(default=None, gt=0)
    # A rollout under way: None, every request naming no version goes to the default.
    rollout: Rollout | None = None


class RoutingTable(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    revision: int
    # Made once with the controller's database. Revisions only compare within one epoch: a
    # controller whose database was replaced starts counting again, and must still be obeyed.
    epoch: str = ""
    models: dict[str, ModelEntry] = Field(default_factory=dict)


WITHHELD = (
    "served from an environment of its own, which this serving replica's release cannot run: "
    "not served here until the replica is upgraded"
)


def for_schema(table: RoutingTable, schema: int) -> RoutingTable:
    """``table`` as a replica that reads ``schema`` must get it (see the module's docstring)."""
    if schema >= SCHEMA_VERSION:
        return table
    models = {}
    for name, model in table.models.items():
        versions = {number: _withheld(entry) for number, entry in model.versions.items()}
        rollout = model.rollout
        if rollout is not None and versions.get(rollout.candidate) != model.versions.get(
            rollout.candidate
        ):
            rollout = None  # its share goes to the default, as when a rollout ends
        models[name] = model.model_copy(update={"versions": versions, "rollout": rollout})
    return table.model_copy(update={"schema_version": SCHEMA_UNSAID, "models": models})


def _withheld(entry: VersionEntry) -> VersionEntry:
    if entry.environment is None or entry.state == VersionState.QUARANTINED:
        return entry  # a quarantined version is refused everywhere, never loaded
    return entry.model_copy(update={"state": VersionState.PENDING, "reasons": [WITHHELD],
                                    "awaiting_proof": False, "environment": None})  # fmt: skip


def supersedes(new: RoutingTable, held: RoutingTable | None) -> bool:
    """Whether ``new`` should replace ``held``: a higher revision, another epoch, or the same
    revision in a later schema (``held`` was answered to a replica of the release before, and
    may withhold versions)."""
    if held is None or new.epoch != held.epoch or new.revision > held.revision:
        return True
    return new.revision == held.revision and new.schema_version > held.schema_version


# How many changes one log line names (a storm's first table can change thousands).
CHANGES_SHOWN = 50


def changes(new: RoutingTable, old: RoutingTable | None) -> list[str]:
    """What ``new`` changes for serving: ``name/version=state`` for each version added or whose
    state changed, ``name/version=removed``, ``name@default=version`` for a new default and
    ``name=added`` for a model registered without a version yet.

    Logged with each table published and taken, so a version's decision can be followed to the
    revision that carried it and the replicas that took it. At most ``CHANGES_SHOWN``, then
    ``+N more``.
    """
    found: list[str] = []
    before = old.models if old is not None and old.epoch == new.epoch else {}
    for name in sorted(set(new.models) | set(before)):
        now, then = new.models.get(name), before.get(name)
        if now is then:
            # One entry in both (an incremental publish keeps the models that did not move;
            # entries are frozen): nothing changed, and looking costs ~2 ms per 1,000 versions.
            continue
        versions = now.versions if now is not None else {}
        previous = then.versions if then is not None else {}
        if now is not None and then is None and not now.versions:
            found.append(f"{name}=added")  # registered, no version yet
        if now is not None and now.default_version != (then.default_version if then else None):
            found.append(f"{name}@default={now.default_version}")
        for version in sorted(set(versions) | set(previous), key=_number):
            entry, held = versions.get(version), previous.get(version)
            if entry is None:
                found.append(f"{name}/{version}=removed")
            elif held is None or held.state != entry.state:
                found.append(f"{name}/{version}={entry.state.value}")
    if len(found) > CHANGES_SHOWN:
        return [*found[:CHANGES_SHOWN], f"+{len(found) - CHANGES_SHOWN} more"]
    return found


def _number(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (0, version)

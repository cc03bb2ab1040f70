"""Plain records of the controller's state, passed between the store and the reconciler.

They are what the store reads and writes in one transaction; the reconciler computes new ones
from old ones and what the registry says, with no database in sight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from wire.routing_table import VersionState

Signature = dict[str, Any]


@dataclass
class VersionRecord:
    version: str
    state: VersionState = VersionState.PENDING
    reasons: list[str] = field(default_factory=list)
    signature: Signature | None = None
    signature_read: bool = False
    decided_against: str | None = None
    decided_at: datetime | None = None
    # The registry's own ``source`` of the version (``models:/m-<id>`` in MLflow 3): a change
    # means the number now names another artifact (a model deleted and registered again).
    source: str | None = None
    # What was checked, read with the signature from the version's artifacts: where serving
    # downloads it, the SHA-256 of its MLmodel, and what it needs from its environment
    # (``ArtifactEnvironment`` as a dict). Serving loads only that URI and refuses another digest.
    artifact_uri: str | None = None
    mlmodel_digest: str | None = None
    # Every file of the checked artifact: ``wire.artifact_manifest.ManifestFile`` dicts, in
    # path order. None for a version read before manifests (serving then checks MLmodel only).
    manifest: list[dict[str, Any]] | None = None
    environment: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    # A decision made by hand, kept through every re-check until removed:
    # {"action": "quarantine" | "release", "reason": str, "actor": str, "at": ISO 8601}.
    override: dict[str, Any] | None = None
    # A serving replica could not load this artifact (``controller.load_failures``):
    # {"kind", "cause", "mlmodel_digest", "replica", "at"}. It quarantines the version while
    # the digest is the version's own; a release by hand or another artifact clears it.
    load_failure: dict[str, Any] | None = None
    # The proof a serving replica made of this artifact before its first request
    # (``controller.proofs``): {"outcome": "passed" | "failed" | "before-proofs", "exercised",
    # "cause", "mlmodel_digest", "replica", "at"}. It counts while the digest is the version's.
    proof: dict[str, Any] | None = None
    # The environment of its own the version is proven and served in, as the last decision
    # assigned it (``controller.own_environments``): ``EnvironmentSpec`` as a dict plus
    # ``shared_failure``, the report that sent it there (None: it needs a missing package).
    # None: the shared serving environment. Proofs and load failures carry the digest of the
    # environment they were made in (``environment_digest``, absent: the shared one).
    own_environment: dict[str, Any] | None = None

    @property
    def number(self) -> int:
        return int(self.version)


@dataclass
class ModelRecord:
    name: str
    policy: str
    environment_policy: str = "isolate"
    default_version: str | None = None
    contract: Signature | None = None
    # The registry's creation time of the registered model (ms): another value means the
    # model was deleted and created again, which makes it a new model with a new contract.
    registry_created_at: int | None = None
    # When the registry was seen without this model; None while it exists. See reconciler.
    deleted_at: datetime | None = None
    # The registry's default alias as last seen (after the controller's own writes): an alias
    # that differs from it was moved by a person. See controller.registry_sync.
    alias_seen: str | None = None
    # The last alias move refused: {"version", "reasons", "at"}.
    alias_refusal: dict[str, Any] | None = None
    # Why the registry refused the verdict tags or the alias, until a write succeeds.
    registry_warning: str | None = None
    # Batching when served (the model tags ``sigserve.max_batch_size``, records per predict
    # call, and ``sigserve.batch_wait_ms``); None: the serving app's defaults.
    max_batch_size: int | None = None
    batch_wait_ms: float | None = None
    # How long one predict call may take when served (the model tag
    # ``sigserve.predict_timeout_s``); None: the serving app's default.
    predict_timeout_s: float | None = None
    # The model tag ``sigserve.proof`` (``on|off``); None: the controller's default
    # (``controller.proofs``).
    proof_policy: str | None = None
    versions: dict[str, VersionRecord] = field(default_factory=dict)
    # The stored row's generation when this record was read (0: not stored), or None for a
    # record made from scratch. A record written with a generation is written only if the row
    # still has it (``Store.update_model``). Not part of what a record says, so not compared.
    generation: int | None = field(default=None, compare=False)

    def sorted_versions(self) -> list[VersionRecord]:
        return sorted(self.versions.values(), key=lambda v: v.number)

"""Turning decisions into the routing table the serving app obeys."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from controller.own_environments import environment_of
from controller.proofs import awaits_proof
from controller.records import ModelRecord
from wire.artifact_manifest import ManifestFile
from wire.routing_table import ModelEntry, Rollout, RoutingTable, VersionEntry


def build_table(
    models: list[ModelRecord],
    revision: int,
    epoch: str,
    rollouts: Mapping[str, Rollout] | None = None,
) -> RoutingTable:
    """The table for ``models``; ``rollouts``: the rollout under way per model name."""
    rollouts = rollouts or {}
    return RoutingTable(
        revision=revision,
        epoch=epoch,
        models={
            m.name: ModelEntry(
                name=m.name,
                default_version=m.default_version,
                contract=m.contract,
                max_batch_size=m.max_batch_size,
                batch_wait_ms=m.batch_wait_ms,
                predict_timeout_s=m.predict_timeout_s,
                rollout=rollouts.get(m.name),
                versions={
                    v.version: VersionEntry(
                        version=v.version,
                        state=v.state,
                        reasons=list(v.reasons),
                        signature=v.signature,
                        source=v.artifact_uri,
                        mlmodel_digest=v.mlmodel_digest,
                        manifest=[ManifestFile.model_validate(f) for f in v.manifest]
                        if v.manifest is not None
                        else None,
                        warnings=list(v.warnings),
                        awaiting_proof=awaits_proof(v),
                        environment=environment_of(v),
                    )
                    for v in m.sorted_versions()
                },
            )
            for m in sorted(models, key=lambda m: m.name)
            if m.deleted_at is None
        },
    )


def content_digest(table: RoutingTable) -> str:
    """A digest of the decisions alone: equal content means no new revision."""
    content = table.model_dump(mode="json", exclude={"revision", "epoch"})
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

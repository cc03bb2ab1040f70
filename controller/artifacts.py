"""What the controller learns from one model version's artifacts, read once per version.

``controller.registry.Registry.artifact`` builds it from the files next to the version's
MLmodel; the reconciler decides from it (signature against the contract, environment against
the serving environment) without touching MLflow. No MLflow import here, so the decision code
and its tests stay free of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.environment import ArtifactEnvironment
from wire.artifact_manifest import ManifestFile


@dataclass(frozen=True)
class ArtifactFacts:
    # The artifact URI serving downloads the version from; a different URI later means
    # different artifacts, so what was read from this one no longer applies.
    source: str
    # sha256 (hex) of the MLmodel bytes: tells a re-written MLmodel at the same URI.
    mlmodel_digest: str
    # ModelSignature.to_dict(), None when the version has no signature.
    signature: dict[str, Any] | None
    environment: ArtifactEnvironment
    # Every file of the artifact with its size, and its SHA-256 up to the hash limit
    # (``wire.artifact_manifest``); None only where a fake registry gives none.
    manifest: tuple[ManifestFile, ...] | None = None

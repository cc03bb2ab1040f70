"""Which artifact a multiplexed model id names: the identity the loader and the router share.

A version is loaded under the id ``name/version@key``, where the key is a digest of everything
the controller checked (the source, the ``MLmodel`` digest, the manifest, the environment): a
new artifact, or the same version moved to an environment of its own, is another model, never
the one already loaded (docs/architecture.md, "Fail closed"). No Ray, no MLflow.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from serving.exceptions import ModelUnavailable
from wire.artifact_manifest import ManifestFile, manifest_digest
from wire.routing_table import EnvironmentSpec

# 64 bits: ids only need to differ between artifacts of one name/version, and stay readable.
_KEY_CHARS = 16


@dataclass(frozen=True)
class Artifact:
    """What the controller checked: where the artifact is, its ``MLmodel`` digest, the
    manifest of its files (None for a version decided before manifests) and the environment it
    is served in (None: the shared serving environment)."""

    source: str
    mlmodel_digest: str
    manifest: tuple[ManifestFile, ...] | None = None
    environment: EnvironmentSpec | None = None

    @cached_property
    def key(self) -> str:
        # Once per artifact (it is frozen): two SHA-256 digests, asked several times a request.
        # Every part: the same MLmodel bytes under another source are still another artifact
        # (the other files may differ), and the runner must load exactly the decided files.
        parts = [self.source, self.mlmodel_digest.lower()]
        if self.manifest is not None:
            parts.append(manifest_digest(self.manifest))
        if self.environment is not None:
            # Moved to an environment of its own, a version is another model to load.
            parts.append(f"environment:{self.environment.digest}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:_KEY_CHARS]


@dataclass(frozen=True)
class ModelId:
    name: str
    version: str
    key: str

    def __str__(self) -> str:
        return f"{self.name}/{self.version}@{self.key}"


def model_id(name: str, version: str, artifact: Artifact) -> str:
    """The multiplexed model id: ``name/version@key``; it starts with ``name/version``."""
    return f"{name}/{version}@{artifact.key}"  # ``str(ModelId(...))``, without making one


def parse_model_id(value: str) -> ModelId:
    """Read back ``name/version@key``, from the right: a name may hold "/" and "@"."""
    rest, at, key = value.rpartition("@")
    name, slash, version = rest.rpartition("/")
    if not (at and slash and name and version) or not _is_key(key):
        raise ModelUnavailable(f"malformed model id {value!r}; expected 'name/version@key'")
    return ModelId(name, version, key)


def bind(value: str, artifact: Artifact) -> ModelId:
    """Parse ``value`` and check that it names ``artifact``.

    This keeps "one id, one artifact" true on the replica whatever a caller sends, so a model
    cached under an id is always the artifact the id was made from.
    """
    parsed = parse_model_id(value)
    if parsed.key != artifact.key:
        raise ModelUnavailable(
            f"model id {value!r} does not name the artifact at {artifact.source!r}",
            model=parsed.name,
            version=parsed.version,
        )
    return parsed


def _is_key(key: str) -> bool:
    return len(key) == _KEY_CHARS and all(c in "0123456789abcdef" for c in key)

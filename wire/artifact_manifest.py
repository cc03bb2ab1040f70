"""The manifest of a checked artifact: every file, its size, and a SHA-256 where one was taken.

A decision is bound to the artifact it was made on (docs/architecture.md, "Decisions are bound
to artifacts"). The controller lists the artifact's location when it reads it and writes down
every file: its path relative to the artifact's root, its size, and the SHA-256 of its bytes
for every file up to ``HASH_LIMIT`` (MLmodel, the pickle, ``code/``, configs, tokenizers). Files
larger than that (model weights) are bound by their size alone: the controller does not
download gigabytes per version to hash them. The manifest travels with the version in the
signed routing table; the replica compares what it downloaded with it, file by file, before
anything of it is loaded (``differences``).

No MLflow here and nothing of either service: the controller builds manifests from an artifact
repository's listing (``controller.artifact_manifest``), serving checks a downloaded directory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# Files up to this size are hashed; larger ones are bound by their size only.
HASH_LIMIT = 64 * 1024 * 1024
# How many differences a refusal names (a replaced directory can differ in thousands of files).
SHOWN = 5
_CHUNK = 1024 * 1024


class ManifestFile(BaseModel):
    model_config = ConfigDict(frozen=True)

    # Relative to the artifact's root, "/"-separated, no "." or ".." segment.
    path: str = Field(min_length=1)
    size: int = Field(ge=0)
    # Hex SHA-256 of the file's bytes; None for a file larger than ``HASH_LIMIT``.
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


def valid_path(path: str) -> bool:
    """Whether ``path`` is relative and stays inside the artifact's root."""
    parts = path.split("/")
    return (
        bool(path)
        and not path.startswith("/")
        and "\\" not in path
        and all(p not in ("", ".", "..") for p in parts)
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def local_files(root: Path) -> tuple[dict[str, int], list[str]]:
    """Every regular file under ``root`` by relative path with its size, and every entry that
    is neither a file nor a directory (a link, a socket): those were never checked."""
    files: dict[str, int] = {}
    odd: list[str] = []
    for directory, dirnames, filenames in os.walk(root):
        base = Path(directory)
        for name in [*dirnames, *filenames]:
            entry = base / name
            relative = entry.relative_to(root).as_posix()
            if entry.is_symlink():
                odd.append(relative)
            elif name in filenames:
                if entry.is_file():
                    files[relative] = entry.stat().st_size
                else:
                    odd.append(relative)
        # os.walk does not follow links to directories; they are named above.
    return files, odd


def differences(root: Path, manifest: Sequence[ManifestFile]) -> list[str]:
    """How the tree at ``root`` differs from ``manifest``: "<path>: missing", "<path>: not
    checked" (a file the manifest lacks), "<path>: size N, not M", "<path>: changed" (the hash
    differs), at most ``SHOWN`` of them then "and N more"; empty when it is the same artifact.

    Sizes are compared before any byte is hashed, so a tree that differs in its files costs
    only a walk of it.
    """
    found, odd = local_files(root)
    wanted = {f.path: f for f in manifest}
    seen: list[str] = []
    seen.extend(f"{p}: missing" for p in sorted(set(wanted) - set(found)))
    seen.extend(f"{p}: not checked" for p in sorted(set(found) - set(wanted)))
    seen.extend(f"{p}: not a regular file" for p in sorted(odd))
    for path in sorted(set(found) & set(wanted)):
        if found[path] != wanted[path].size:
            seen.append(f"{path}: size {found[path]}, not {wanted[path].size}")
    if not seen:
        for path, file in sorted(wanted.items()):
            if file.sha256 is not None and sha256_of(root / path) != file.sha256:
                seen.append(f"{path}: changed")
    return _bounded(seen)


def _bounded(items: list[str]) -> list[str]:
    if len(items) > SHOWN:
        return [*items[:SHOWN], f"and {len(items) - SHOWN} more"]
    return items


def manifest_digest(manifest: Iterable[ManifestFile]) -> str:
    """One SHA-256 for a whole manifest, independent of its order: part of a model id."""
    lines = sorted(f"{f.path}\0{f.size}\0{f.sha256 or ''}" for f in manifest)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()

"""The manifest of a version's artifact, built from its store as the controller reads it.

Every file of the location is listed (recursively: ``code/``, tokenizers, weights) with the
size the store gives, and every file up to ``HASH_LIMIT`` is hashed as it streams in, never
held whole in memory: from the tracking server's artifact proxy (``mlflow-artifacts:``, http)
the body is hashed chunk by chunk; from other stores the file is downloaded to a temporary
directory, hashed and removed. Files past the limit (weights) are bound by their size only.
What the manifest is for, and what it does not bind: ``wire.artifact_manifest`` and
docs/security.md, "What a decision is bound to".
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
from collections.abc import Mapping
from typing import Any

from controller.read_reasons import ReadFailure, size_text
from wire.artifact_manifest import HASH_LIMIT, ManifestFile, valid_path

# More files than this in one artifact is not a model but a way to keep the controller busy.
MAX_FILES = 10_000
_CHUNK = 1024 * 1024


def build_manifest(
    repo: Any,
    *,
    read: Mapping[str, bytes],
    hash_limit: int = HASH_LIMIT,
    max_files: int = MAX_FILES,
) -> list[ManifestFile]:
    """Every file under ``repo``'s location, sorted by path.

    ``read``: files the caller has already read (MLmodel, the environment files), hashed from
    those very bytes, so the manifest binds what the decision was made on and not a second
    fetch that could differ.
    """
    listed = _walk(repo, max_files)
    manifest: list[ManifestFile] = []
    with tempfile.TemporaryDirectory(prefix="sigserve-manifest-") as tmp:
        for path, size in listed:
            if path in read:
                data = read[path]
                manifest.append(ManifestFile(
                    path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest()
                ))
            elif size is not None and size > hash_limit:
                manifest.append(ManifestFile(path=path, size=size))
            else:
                length, sha = _hash(repo, path, hash_limit, tmp)
                manifest.append(ManifestFile(path=path, size=length, sha256=sha))
    return manifest


def _walk(repo: Any, max_files: int) -> list[tuple[str, int | None]]:
    files: list[tuple[str, int | None]] = []
    pending: list[str | None] = [None]
    while pending:
        directory = pending.pop()
        for info in repo.list_artifacts(directory):
            path = str(info.path).strip("/")
            if not valid_path(path):
                raise ReadFailure(
                    "its artifact lists a file outside its location",
                    f"the artifact store listed {path!r} under {directory!r}",
                )
            if info.is_dir:
                pending.append(path)
                continue
            size = info.file_size
            files.append((path, int(size) if isinstance(size, int) and size >= 0 else None))
            if len(files) > max_files:
                raise ReadFailure(f"its artifact holds more than {max_files} files")
    return sorted(files)


def _hash(repo: Any, path: str, limit: int, tmp: str) -> tuple[int, str]:
    """The size and SHA-256 of ``path``, read as a stream; a file that turns out larger than
    ``limit`` (its listing gave no size, or a smaller one) is refused: reading all of it to
    learn its size is what the limit is there to avoid."""
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    digest = hashlib.sha256()
    length = 0
    for chunk in (
        _streamed(repo, path) if isinstance(repo, HttpArtifactRepository)
        else _downloaded(repo, path, tmp)
    ):
        digest.update(chunk)
        length += len(chunk)
        if length > limit:
            raise ReadFailure(
                "a file of its artifact is larger than its listing says "
                f"(past {size_text(limit)})",
                f"{path} is larger than {size_text(limit)} and was not listed so",
            )
    return length, digest.hexdigest()


def _streamed(repo: Any, path: str) -> Any:
    # The request HttpArtifactRepository._download_file makes (the repository's own URI and
    # credentials), hashed as it comes instead of written to disk.
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.request_utils import augmented_raise_for_status
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(repo.artifact_uri)  # type: ignore[no-untyped-call]
    endpoint = posixpath.join("/", path)
    response = http_request(creds, endpoint, "GET", stream=True)  # type: ignore[no-untyped-call]
    try:
        augmented_raise_for_status(response)  # type: ignore[no-untyped-call]
        yield from response.iter_content(chunk_size=_CHUNK)
    finally:
        response.close()


def _downloaded(repo: Any, path: str, tmp: str) -> Any:
    local = repo.download_artifacts(path, dst_path=tmp)
    try:
        with open(local, "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk
    finally:
        os.unlink(local)

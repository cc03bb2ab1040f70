"""The few small files of a version's artifacts, each read within a size cap.

A version's location is listed once: the listing says which files are there (a missing file
is absent from it, however the store words "not found") and, where the store gives it, each
file's size, so a file past the cap is refused before a byte of it is fetched. The read is
bounded too, in case the listing lies or has no size: from the tracking server's artifact
proxy (``mlflow-artifacts:``, http) the body is streamed and dropped at the cap; from other
stores the file is downloaded to a temporary directory and only the cap is read back. Either
way no more than the cap (1 MiB) of a file is ever held in memory.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Any

from controller.read_reasons import too_large

MAX_FILE_BYTES = 1 << 20
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Listing:
    # The location's top-level files with their sizes (None where the store gives none).
    files: dict[str, int | None]
    # Every top-level entry's name, directories included (to say what a location holds).
    names: list[str]


def list_files(repo: Any) -> Listing:
    """The top level of an ``ArtifactRepository``'s location."""
    files: dict[str, int | None] = {}
    names: list[str] = []
    for info in repo.list_artifacts():
        name = posixpath.basename(str(info.path).rstrip("/"))
        names.append(name)
        if not info.is_dir:
            size = info.file_size
            files[name] = int(size) if isinstance(size, int) and size >= 0 else None
    return Listing(files=files, names=sorted(names))


def read_file(repo: Any, filename: str, listed: int | None, cap: int, tmp: str) -> bytes:
    """``filename``'s bytes, or the ``ReadFailure`` that says it is larger than ``cap``."""
    if listed is not None and listed > cap:
        raise too_large(filename, listed, cap)
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    if isinstance(repo, HttpArtifactRepository):
        return _streamed(repo, filename, cap)
    path = repo.download_artifacts(filename, dst_path=tmp)
    size = os.path.getsize(path)
    if size > cap:
        raise too_large(filename, size, cap)
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:  # it grew after the stat
        raise too_large(filename, None, cap)
    return data


def _streamed(repo: Any, filename: str, cap: int) -> bytes:
    # HttpArtifactRepository._download_file streams the whole body to disk; this is the same
    # request (the repository's own URI and credentials), read no further than the cap.
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.request_utils import augmented_raise_for_status
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(repo.artifact_uri)  # type: ignore[no-untyped-call]
    endpoint = posixpath.join("/", filename)
    response = http_request(creds, endpoint, "GET", stream=True)  # type: ignore[no-untyped-call]
    try:
        augmented_raise_for_status(response)  # type: ignore[no-untyped-call]
        data = bytearray()
        for chunk in response.iter_content(chunk_size=_CHUNK):
            data += chunk
            if len(data) > cap:
                raise too_large(filename, None, cap)
        return bytes(data)
    finally:
        response.close()

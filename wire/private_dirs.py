"""Directories under a shared temp dir that only this process's user can enter.

The local stack's names under /tmp are predictable (Ray's temp dir and HAProxy's are found
again from ``SIGSERVE_HOME``), so anyone on the machine could make one first, or a symlink by
its name, and read Ray's sockets and logs or write HAProxy's configuration. Once checked, a
directory cannot be swapped: /tmp's sticky bit keeps others from renaming or removing it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


class UnsafeDirectory(RuntimeError):
    """A directory that would hold sockets, configuration or logs is not this user's alone."""


def private_dir(path: Path, *, owner: int | None = None) -> Path:
    """``path`` as a directory only ``owner`` (this process's user) can enter: made with mode
    0700, or, when it exists, refused unless it is a real directory of ``owner`` that no one
    else can write to (then narrowed to 0700).
    """
    owner = os.getuid() if owner is None else owner
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    found = path.lstat()
    if not stat.S_ISDIR(found.st_mode):
        raise UnsafeDirectory(f"{path} is not a directory (a symlink or a file): remove it")
    if found.st_uid != owner:
        raise UnsafeDirectory(
            f"{path} belongs to uid {found.st_uid}, not to this user ({owner}): someone else "
            "made it; remove it, or set TMPDIR to a directory of your own"
        )
    if found.st_mode & 0o022:
        mode = stat.S_IMODE(found.st_mode)
        raise UnsafeDirectory(f"{path} can be written by others (mode {mode:o}): remove it")
    path.chmod(0o700)
    return path

"""Where a replica downloads the artifacts it loads, and how what a dead replica left goes.

A loaded model's directory leaves with the model (``serving.loader.LoadedModel``). A replica
that dies (killed, out of memory, Ray stopped) runs no clean-up, and a version's artifacts can
weigh hundreds of MB: the test suite alone left 1.2 GB of them in a day. So each process
downloads under a parent of its own, ``<tmp>/sigserve-models-<pid>``, and the first load of a
process removes the parents of processes that are gone. A pid that is alive, or that this user
may not signal (``wire.pids``), keeps its parent. Downloads of releases before this one
(``<tmp>/sigserve-model-*``, with no pid to go by) are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

from wire.pids import alive
from wire.private_dirs import private_dir

_PREFIX = "sigserve-models-"
_lock = threading.Lock()
_swept_for: int | None = None


def new_model_dir() -> Path:
    """A fresh, empty directory for one load, under this process's own parent."""
    global _swept_for
    pid = os.getpid()
    root = Path(tempfile.gettempdir())
    with _lock:
        if _swept_for != pid:
            _sweep(root, pid)
            _swept_for = pid
    parent = private_dir(root / f"{_PREFIX}{pid}")
    return Path(tempfile.mkdtemp(prefix="model-", dir=parent))


def _sweep(root: Path, own_pid: int) -> None:
    for parent in root.glob(f"{_PREFIX}*"):
        try:
            pid = int(parent.name.removeprefix(_PREFIX))
        except ValueError:
            continue
        if pid != own_pid and not alive(pid):
            with contextlib.suppress(OSError):
                shutil.rmtree(parent)

"""Whether a process still runs, by its pid: what a file named for its owner is judged by.

``sigserve.ports`` (a port window reserved by a pid file) and ``serving.model_dirs`` (the
downloads of a replica that died) both let go of what a process that is gone left. A pid this
user may not signal belongs to someone: alive.
"""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

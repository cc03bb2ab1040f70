"""Ports for the processes a stack starts, picked so that no two of them meet.

A port the kernel hands out for ``bind(("", 0))`` comes from its ephemeral range, the range
every outgoing connection and every port-0 listener of Ray's (GCS, raylet, agents) also draws
from: between being picked and being bound, it can be taken. Ports here come from below that
range instead (20000-32767 is under Linux's 32768 and the IANA's 49152) and above Ray's default
worker ports (10002-19999):

- ``port_window`` hands out a block of ``WINDOW`` ports (Ray Serve's direct-ingress replicas,
  a Ray node's workers) from 20000-29999. A block is reserved across processes by a file naming its
  owner's pid, so two stacks on one machine never get the same block; a reservation whose pid
  is gone is taken over.
- ``free_port`` hands out one port from 30000-32767, checked free at the time, and never the
  same one twice in a process.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import random
import socket
import tempfile
import threading
from pathlib import Path

from wire.pids import alive
from wire.private_dirs import private_dir

WINDOW = 200
_WINDOWS = range(20000, 30000)
_SINGLES = range(30000, 32768)

_lock = threading.Lock()
_given: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, not handed out before in this process."""
    with _lock:
        for port in random.sample(_SINGLES, len(_SINGLES)):
            if port not in _given and _bindable(port):
                _given.add(port)
                return port
    raise RuntimeError(f"no free port in {_SINGLES.start}-{_SINGLES.stop - 1}")


def port_window() -> int:
    """The first of ``WINDOW`` consecutive ports, reserved for this process until it exits."""
    bases = list(_WINDOWS[::WINDOW])
    random.shuffle(bases)
    with _lock:
        for base in bases:
            if _bindable(base) and _bindable(base + WINDOW - 1) and _reserve(base):
                return base
    raise RuntimeError(f"no free window of {WINDOW} ports in {_WINDOWS.start}-{_WINDOWS.stop - 1}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _reserve(base: int) -> bool:
    # Ray binds the window's ports later, in processes of its own: until then only this file
    # says the window is taken. The lock makes reading, taking over and writing one step.
    root = private_dir(Path(tempfile.gettempdir()) / "sigserve-port-windows")
    path = root / str(base)
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() and _owner_alive(path):
            return False
        path.write_text(str(os.getpid()))
    atexit.register(_release, path, os.getpid())
    return True


def _owner_alive(path: Path) -> bool:
    try:
        return alive(int(path.read_text()))
    except (OSError, ValueError):
        return False


def _release(path: Path, pid: int) -> None:
    # A forked child inherits the atexit hook; only the process that reserved releases.
    if os.getpid() == pid:
        with contextlib.suppress(OSError):
            path.unlink()

"""Child processes that are stopped with everything they started.

Each child runs in its own session, so its process group holds its own children too (MLflow's
workers, uvicorn's); stopping sends SIGTERM to the whole group, then SIGKILL to whatever is
left. Only groups this module started are signalled: nothing is found or killed by name. A
child also asks the kernel for SIGTERM when its parent dies, so even a parent killed with SIGKILL
leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx

_PR_SET_PDEATHSIG = 1


def _death_signal_setter() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child when its parent dies, even by SIGKILL.

    libc is loaded here, in the parent: the hook runs between fork and exec, where loading a
    library could deadlock on a lock another thread held at fork time.
    """
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: the parent's own clean-up is all there is

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


class ProcessFailed(RuntimeError):
    pass


def wait_for_http(
    url: str, timeout_s: float, *, alive: Callable[[], str | None] = lambda: None
) -> None:
    """Poll ``url`` until it answers 200.

    ``alive`` returns why waiting is pointless (the process exited), or None to go on.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (dead := alive()) is not None:
            raise ProcessFailed(dead)
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f}s")


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        health_url: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.health_url = health_url
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_death_signal_setter(),
        )
        return self

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_healthy(self, timeout_s: float = 120.0) -> None:
        """Wait until ``health_url`` answers 200; fail early if the process exits."""
        if self.health_url is None:
            return

        def exited() -> str | None:
            return None if self.running() else f"{self.name} exited early:\n{self.log_tail()}"

        try:
            wait_for_http(self.health_url, timeout_s, alive=exited)
        except TimeoutError as exc:
            raise ProcessFailed(f"{self.name}: {exc}:\n{self.log_tail()}") from None

    def stop(self, timeout_s: float = 15.0) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
        # The leader may be gone while its children linger in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

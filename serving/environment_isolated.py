"""Environments that inherit nothing (kind ``isolated``): a venv of the version's own
requirements and a model host process in it; no Ray in here.

For a version that needs another MLflow or pandas major than the serving environment's, a layer
on top of the serving venv cannot work (the serving stack imports its own). As
``mlflow models serve --env-manager uv`` does, the environment is a venv built with uv from the
version's requirement lines alone, with the serving interpreter (a pickled model needs the same
Python minor), plus ``pyarrow`` for the boundary (``serving.environment_codec``, which the host
reads by path: sigserve itself is not installed there). The venv is built once per digest under
a private directory (``.complete`` marks a finished build; an unfinished one is built again).

The environment's actor (``serving.environment_host.EnvironmentHost``, in the serving venv)
downloads and checks each artifact as the loader does and has ``ModelProcess`` load it in the
host process (``serving/environment_child.py``), one process per environment, one request at a
time over its stdin and stdout as JSON lines (bytes base64). Everything crosses as data.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from serving.environment_builds import (
    EnvironmentBuildFailed,
    child_env,
    named,
    resolver_reason,
    setting,
    tool_env,
)
from serving.environment_codec import Encoded, decode, encode
from serving.environment_errors import HostUnavailable, raise_error
from wire.private_dirs import private_dir
from wire.routing_table import EnvironmentSpec

CHILD = Path(__file__).with_name("environment_child.py")
CODEC = Path(__file__).with_name("environment_codec.py")
# What the host process needs beside the version's own requirements.
HOST_REQUIREMENTS = ("pyarrow",)
_DIGEST_CHARS = 16
# A host process that keeps dying is started again at most this many times within the window
# (``ModelProcess``), the second restart 1 s after the first, then 2, 4 ... up to 30 s.
HOST_MAX_RESTARTS = int(setting("SIGSERVE_ENVIRONMENT_HOST_MAX_RESTARTS", 5))
HOST_RESTART_WINDOW_S = setting("SIGSERVE_ENVIRONMENT_HOST_RESTART_WINDOW_S", 300.0)
HOST_RESTART_BACKOFF_S = 1.0
HOST_RESTART_MAX_BACKOFF_S = 30.0

logger = logging.getLogger(__name__)


def venv_root() -> Path:
    return private_dir(Path(tempfile.gettempdir()) / f"sigserve-environments-{os.getuid()}")


def build_venv(
    spec: EnvironmentSpec,
    root: Path,
    index: tuple[list[str], dict[str, str]],
    timeout_s: float,
) -> Path:
    """The venv of ``spec`` under ``root``, built unless a finished one is there."""
    path = root / spec.digest[:_DIGEST_CHARS]
    if (path / ".complete").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    options, variables = index
    # No credentials: building an sdist runs its code (``tool_env``).
    env = tool_env(os.environ, variables)
    env.pop("VIRTUAL_ENV", None)
    lines = path.with_suffix(".txt")
    lines.write_text("\n".join([*spec.requirements, *HOST_REQUIREMENTS]) + "\n")
    python = str(path / "bin" / "python")
    commands = [
        [sys.executable, "-m", "uv", "venv", "--quiet", "--python", sys.executable, str(path)],
        [sys.executable, "-m", "uv", "pip", "install", "--quiet", "--python", python, *options,
         "-r", str(lines)],
    ]  # fmt: skip
    try:
        for command in commands:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, check=False, env=env
            )
            if done.returncode != 0:
                shutil.rmtree(path, ignore_errors=True)
                # The node's temp path means nothing to the person reading the reason.
                text = (done.stderr + done.stdout).replace(str(lines), "requirements.txt")
                raise EnvironmentBuildFailed(resolver_reason(text, spec.requirements))
    except subprocess.TimeoutExpired:
        shutil.rmtree(path, ignore_errors=True)
        raise EnvironmentBuildFailed(
            f"its environment ({named(spec.requirements)}) was not built within "
            f"{timeout_s:g} s (SIGSERVE_ENVIRONMENT_BUILD_TIMEOUT_S)"
        ) from None
    finally:
        lines.unlink(missing_ok=True)
    (path / ".complete").touch()
    return path


def _bytes(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"__b64__": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON")


def _unbytes(record: dict[str, Any]) -> Any:
    if len(record) == 1 and "__b64__" in record:
        return base64.b64decode(record["__b64__"])
    return record


class ModelProcess:
    """The host process of one isolated environment: one request at a time.

    A host process that died (killed, out of memory, crashed in C code) is started again by the
    next call, which loads the models it held again before it is answered; the call that was
    in flight when it died is answered ``HostUnavailable`` (a 503: trying the same input again
    at once could kill it again). Restarts are bounded: after the first, each waits a backoff
    that doubles up to ``max_backoff_s`` (calls meanwhile answer 503 with the wait), and after
    ``max_restarts`` within ``window_s`` the host is broken: no restart until the oldest of
    them leaves the window, every call and load answering 503 with why (``broken``).
    """

    def __init__(
        self,
        venv: Path,
        *,
        max_restarts: int = HOST_MAX_RESTARTS,
        window_s: float = HOST_RESTART_WINDOW_S,
        backoff_s: float = HOST_RESTART_BACKOFF_S,
        max_backoff_s: float = HOST_RESTART_MAX_BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._venv = venv
        self._lock = threading.Lock()
        self._sent = 0
        self._max_restarts, self._window_s = max_restarts, window_s
        self._backoff_s, self._max_backoff_s = backoff_s, max_backoff_s
        self._clock = clock
        # Key -> the checked directory it was loaded from: what a new process loads again.
        self._loaded: dict[str, str] = {}
        # Key -> why it could not be loaded again in a new process (its calls answer that).
        self._lost: dict[str, str] = {}
        self._restarts: deque[float] = deque()
        self.restarts = 0
        self.last_exit: str | None = None
        self._process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(self._venv / "bin" / "python"), "-I", str(CHILD), str(CODEC)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=child_env(os.environ),
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def broken(self) -> str | None:
        """Why no call is answered for now (restarted too often), or None. Without the lock:
        ``info`` asks while a long call holds it."""
        if self._process.poll() is None:
            return None
        return self._refusal(self._clock(), list(self._restarts))

    def call(self, request: dict[str, Any]) -> Encoded:
        op, key = request.get("op"), request.get("key")
        with self._lock:
            self._running()
            if op in ("predict", "stream") and key in self._lost:
                raise HostUnavailable(self._lost[str(key)])
            answer = self._exchange(request)
            if op == "load" and "error" not in answer and isinstance(key, str):
                self._loaded[key] = str(request["path"])
                self._lost.pop(key, None)
            elif op == "unload" and isinstance(key, str):
                self._loaded.pop(key, None)
                self._lost.pop(key, None)
        return answer

    def _exchange(self, request: dict[str, Any]) -> Encoded:
        stdin, stdout = self._process.stdin, self._process.stdout
        if stdin is None or stdout is None:
            raise HostUnavailable("the environment's model host has no pipes")
        self._sent += 1
        sent = f"{os.getpid()}-{self._sent}"
        try:
            stdin.write((json.dumps({**request, "id": sent}, default=_bytes) + "\n").encode())
            stdin.flush()
            line = stdout.readline()
        except (BrokenPipeError, ValueError):
            line = b""
        if not line:
            code = self._process.wait()
            self.last_exit = exit_cause(code)
            raise HostUnavailable(
                f"the environment's model host exited while answering ({self.last_exit}); it "
                "is started again on the next call"
            )
        try:
            answer: Encoded = json.loads(line, object_hook=_unbytes)
        except ValueError:
            answer = {}
        if answer.get("id") != sent:
            # Not this request's answer: the pipe can no longer be trusted to pair them,
            # so the process goes rather than answer anyone with another's result.
            self._process.kill()
            self._process.wait()
            self.last_exit = "stopped: it answered out of turn"
            raise HostUnavailable(
                "the environment's model host answered out of turn and was stopped; it is "
                "started again on the next call"
            )
        answer.pop("id", None)
        return answer

    def _running(self) -> None:
        """Start the process again if it exited, within the bounds (the class docstring)."""
        code = self._process.poll()
        if code is None:
            return
        if self.last_exit is None:
            self.last_exit = exit_cause(code)
        now = self._clock()
        while self._restarts and now - self._restarts[0] >= self._window_s:
            self._restarts.popleft()
        refusal = self._refusal(now, list(self._restarts))
        if refusal is not None:
            raise HostUnavailable(refusal)
        self._restarts.append(now)
        self.restarts += 1
        self._process = self._start()
        logger.warning("the model host of %s exited (%s): started again (pid %s), loading %d "
                       "model(s)", self._venv.name, self.last_exit, self._process.pid,
                       len(self._loaded))  # fmt: skip
        for key, path in list(self._loaded.items()):
            answer = self._exchange({"op": "load", "key": key, "path": path})
            if "error" in answer:
                # Loaded before, so the artifact is not at fault: a 503 with why, until the
                # replica lets go of it (or the next restart loads it).
                error = answer["error"]
                self._lost[key] = (
                    "the model could not be loaded again after its environment's host process "
                    f"was started again: {error.get('type')}: {error.get('message', '')[:300]}"
                )
        self.last_exit = None

    def _refusal(self, now: float, restarts: list[float]) -> str | None:
        restarts = [t for t in restarts if now - t < self._window_s]
        exited = f"the environment's model host exited ({self.last_exit})"
        if len(restarts) >= self._max_restarts:
            oldest = restarts[0] if restarts else now
            wait = oldest + self._window_s - now
            return (f"{exited} and was started again {len(restarts)} times within "
                    f"{self._window_s:g} s: the environment is broken, not started again for "
                    f"{wait:.0f} s")  # fmt: skip
        if restarts:
            backoff = min(self._backoff_s * 2 ** (len(restarts) - 1), self._max_backoff_s)
            wait = restarts[-1] + backoff - now
            if wait > 0:
                return f"{exited}: it is started again in {wait:.1f} s"
        return None

    def close(self) -> None:
        with self._lock:
            self._process.kill()
            self._process.wait()


def exit_cause(code: int) -> str:
    """How a process ended, as a person reads it (a kill by the kernel's OOM killer is a
    SIGKILL too)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = ", perhaps out of memory" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


class ProcessModel:
    """A model loaded in the host process, as the environment's actor holds it."""

    def __init__(self, process: ModelProcess, key: str, local: Path) -> None:
        self._process = process
        self.key = key
        answer = process.call({"op": "load", "key": key, "path": str(local)})
        if "error" in answer:
            raise_error(answer["error"])

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        answer = self._process.call(
            {"op": "predict", "key": self.key, "data": encode(data), "params": params}
        )
        if "error" in answer:
            raise_error(answer["error"])
        return decode(answer["answer"])

    def predict_stream(self, data: Any, params: dict[str, Any] | None = None) -> Iterator[Any]:
        """The model's ``predict_stream`` in the host process, one chunk per request."""
        started = self._process.call(
            {"op": "stream", "key": self.key, "data": encode(data), "params": params}
        )
        if "error" in started:
            raise_error(started["error"])
        stream, done = started["stream"], False
        try:
            while True:
                answer = self._process.call({"op": "next", "stream": stream})
                if "error" in answer or answer.get("done"):
                    done = True
                    if "error" in answer:
                        raise_error(answer["error"])
                    return
                yield decode(answer["chunk"])
        finally:
            if not done:
                with contextlib.suppress(Exception):
                    self._process.call({"op": "close", "stream": stream})

    def unload(self) -> None:
        self._process.call({"op": "unload", "key": self.key})

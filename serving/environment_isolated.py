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
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from serving.environment_builds import EnvironmentBuildFailed, resolver_reason
from serving.environment_codec import Encoded, decode, encode
from serving.environment_host import raise_error
from serving.loader import LoadFailed
from wire.private_dirs import private_dir
from wire.routing_table import EnvironmentSpec

CHILD = Path(__file__).with_name("environment_child.py")
CODEC = Path(__file__).with_name("environment_codec.py")
# What the host process needs beside the version's own requirements.
HOST_REQUIREMENTS = ("pyarrow",)
_DIGEST_CHARS = 16


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
    env = {**os.environ, **variables, "NO_COLOR": "1"}
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
            f"its environment ({', '.join(spec.requirements)}) was not built within "
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
    """The host process of one isolated environment: one request at a time."""

    def __init__(self, venv: Path) -> None:
        self._lock = threading.Lock()
        self._sent = 0
        self._process = subprocess.Popen(
            [str(venv / "bin" / "python"), "-I", str(CHILD), str(CODEC)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
        )  # fmt: skip

    def call(self, request: dict[str, Any]) -> Encoded:
        with self._lock:
            stdin, stdout = self._process.stdin, self._process.stdout
            if stdin is None or stdout is None or self._process.poll() is not None:
                raise LoadFailed("the environment's model host has exited", permanent=False)
            self._sent += 1
            sent = f"{os.getpid()}-{self._sent}"
            stdin.write((json.dumps({**request, "id": sent}, default=_bytes) + "\n").encode())
            stdin.flush()
            line = stdout.readline()
            try:
                answer: Encoded = json.loads(line, object_hook=_unbytes) if line else {}
            except ValueError:
                answer = {}
            if answer.get("id") != sent:
                # Not this request's answer: the pipe can no longer be trusted to pair them,
                # so the process goes rather than answer anyone with another's result.
                self._process.kill()
                raise LoadFailed(
                    "the environment's model host answered out of turn and was stopped",
                    permanent=False,
                )
        answer.pop("id", None)
        return answer

    def close(self) -> None:
        self._process.kill()


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

    def unload(self) -> None:
        self._process.call({"op": "unload", "key": self.key})

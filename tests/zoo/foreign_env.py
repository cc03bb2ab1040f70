"""A Python virtualenv of other packages than sigserve's, built from PyPI once and cached.

The zoo logs models with clients a user would have (an MLflow 2.x client, say), which cannot be
installed next to sigserve's MLflow 3: each gets a venv of its own, created with the machine's
Python 3.11 and pip, so the machine's package index settings (pip.conf, ``PIP_*``) apply as they
would for a person. A venv is kept under ``~/.cache/sigserve-test-envs/<digest of the pins>``:
a second run with the same pins builds nothing. A build that did not finish leaves no
``.complete`` file and is built again from scratch; concurrent runs wait on a lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("SIGSERVE_TEST_ENVS", Path.home() / ".cache" / "sigserve-test-envs"))
# The serving image's interpreter: a model pickled by the venv must load on the replicas.
PYTHON = os.environ.get("SIGSERVE_TEST_ENV_PYTHON", "python3.11")
BUILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class ForeignEnv:
    path: Path
    built: bool  # False when it came from the cache
    seconds: float  # what getting it took, build or cache hit

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def run(self, script: Path, *args: str, env: dict[str, str] | None = None,
            timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with this venv's Python, isolated from the caller's packages."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        clean.update(env or {})
        return subprocess.run(
            [str(self.python), "-I", str(script), *args], env=clean, capture_output=True,
            text=True, timeout=timeout_s, check=False,
        )


def digest(pins: Sequence[str], python: str = PYTHON) -> str:
    blob = json.dumps({"python": _python_version(python), "pins": sorted(pins)})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _python_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure(pins: Sequence[str], python: str = PYTHON) -> ForeignEnv:
    """The venv with exactly ``pins`` installed (and what pip resolves for them)."""
    started = time.monotonic()
    key = digest(pins, python)
    path = CACHE / key
    done = path / ".complete"
    with _locked(CACHE / f"{key}.lock"):
        if done.is_file():
            return ForeignEnv(path, built=False, seconds=time.monotonic() - started)
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(path)], check=True, timeout=120)
        pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet",
               "--disable-pip-version-check"]
        result = subprocess.run([*pip, *pins], capture_output=True, text=True,
                                timeout=BUILD_TIMEOUT_S, check=False)
        if result.returncode != 0:
            shutil.rmtree(path, ignore_errors=True)
            raise RuntimeError(f"pip could not build {pins}: {result.stderr[-2000:]}")
        freeze = subprocess.run([str(path / "bin" / "python"), "-m", "pip", "freeze"],
                                capture_output=True, text=True, check=True)
        (path / "freeze.txt").write_text(freeze.stdout, encoding="utf-8")
        done.write_text(json.dumps({"pins": list(pins)}), encoding="utf-8")
    return ForeignEnv(path, built=True, seconds=time.monotonic() - started)


if __name__ == "__main__":  # build by hand: python -m tests.zoo.foreign_env mlflow==2.22.0 ...
    env = ensure(sys.argv[1:])
    print(json.dumps({"path": str(env.path), "built": env.built, "seconds": env.seconds}))

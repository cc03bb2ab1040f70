"""Seldon MLServer with its MLflow runtime, as the peer the throughput benchmarks compare with.

    with running_mlserver("bench_upper", "models:/bench_upper/1", home, tracking_uri) as peer:
        peer.invocations      # MLflow's scoring protocol
        peer.infer            # the Open Inference Protocol

MLServer runs from a venv of its own (``ensure_env``: built from PyPI once, cached under
``~/.cache/sigserve-bench-envs``), since its pins are not sigserve's. Its models are the
registered versions the benchmark serves, downloaded from the benchmark's MLflow. One process
per model (its MLflow runtime answers MLflow's protocol at the root, ``/invocations``, where the
first model loaded takes the route), no inference pool (``parallel_workers: 0``): with MLServer
1.7.1's default pool its worker process dies at start on this stack ("There is no current event
loop in thread 'MainThread'", /work/shared/perf-calibration.md). Started on free ports,
stopped by its process group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sigserve.ports import free_port
from sigserve.processes import ManagedProcess

HOST = "127.0.0.1"
VERSION = "1.7.1"
# MLServer and its runtime; MLflow and pandas as sigserve's lock has them, so both servers load
# the same artifact with the same libraries.
CORE = (
    f"mlserver=={VERSION}",
    f"mlserver-mlflow=={VERSION}",
    "mlflow==3.17.2",
    "pandas==3.1.1",
)
# What MiniLM needs besides: sentence-transformers and the CPU torch wheel (the plain PyPI torch
# brings CUDA's gigabytes). A benchmark of numeric models does without (``CORE`` alone).
REQUIREMENTS = (
    *CORE,
    "sentence-transformers==6.2.0",
    "transformers==5.24.0",
    "torch==2.13.0+cpu",
)
CACHE = Path.home() / ".cache" / "sigserve-bench-envs"


def ensure_env(requirements: tuple[str, ...] = REQUIREMENTS) -> Path:
    """The venv's directory, built (once per set of requirements) if it is not there yet."""
    env = CACHE / f"mlserver-{VERSION}-{_digest(requirements)}"
    done = env / ".complete"
    if done.is_file():
        return env
    env.parent.mkdir(parents=True, exist_ok=True)
    print(f"building MLServer's venv in {env} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, *requirements], check=True)
    done.write_text("\n".join(requirements) + "\n")
    return env


def _digest(items: tuple[str, ...]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Peer:
    name: str
    url: str
    process: ManagedProcess

    @property
    def invocations(self) -> str:
        return f"{self.url}/invocations"

    @property
    def infer(self) -> str:
        return f"{self.url}/v2/models/{self.name}/infer"


@contextmanager
def running_mlserver(
    name: str,
    uri: str,
    home: Path,
    tracking_uri: str,
    *,
    requirements: tuple[str, ...] = REQUIREMENTS,
) -> Iterator[Peer]:
    """MLServer serving the MLflow model ``uri`` as ``name``, until the block ends, from the
    venv of ``requirements`` (``CORE`` is enough for a model without torch)."""
    env_dir = ensure_env(requirements)
    root = home / f"mlserver-{name}"
    (root / name).mkdir(parents=True, exist_ok=True)
    local = _download(env_dir, uri, root / "artifacts" / name, tracking_uri)
    settings = {
        "name": name,
        "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": str(local)},
    }
    (root / name / "model-settings.json").write_text(json.dumps(settings))
    http, grpc, metrics = free_port(), free_port(), free_port()
    server_settings = {
        "host": HOST,
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": metrics,
        "parallel_workers": 0,
    }
    (root / "settings.json").write_text(json.dumps(server_settings))
    environ = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # Nothing of sigserve's venv may leak in.
    for variable in ("VIRTUAL_ENV", "PYTHONPATH"):
        environ.pop(variable, None)
    process = ManagedProcess(
        f"mlserver {name}",
        [str(env_dir / "bin" / "mlserver"), "start", str(root)],
        env=environ,
        log_path=home / f"mlserver-{name}.log",
        health_url=f"http://{HOST}:{http}/v2/models/{name}/ready",
    ).start()
    try:
        process.wait_healthy(600)
        yield Peer(name, f"http://{HOST}:{http}", process)
    finally:
        process.stop()


def _download(env_dir: Path, uri: str, dest: Path, tracking_uri: str) -> Path:
    """The model's files on disk, fetched by MLServer's own MLflow (the runtime reads a path)."""
    if not dest.exists():
        code = (
            "import sys, mlflow\n"
            "mlflow.set_tracking_uri(sys.argv[1])\n"
            "mlflow.artifacts.download_artifacts(artifact_uri=sys.argv[2], dst_path=sys.argv[3])\n"
        )
        dest.mkdir(parents=True)
        subprocess.run(
            [str(env_dir / "bin" / "python"), "-c", code, tracking_uri, uri, str(dest)],
            check=True,
        )
    return dest


if __name__ == "__main__":
    print(ensure_env(CORE if sys.argv[1:] == ["--core"] else REQUIREMENTS))

"""What binding a version to the manifest of its files costs (issue 16), on a real mlflow server.

Per model, against the tracking server's artifact proxy (``mlflow-artifacts:``, the default
store): the controller's whole read of a version (``Registry.artifact``: MLmodel, environment
files, and now the manifest) and the manifest's part of it (``build_manifest``: the recursive
listing and the hashing of every file up to the limit); on the replica's side, the download and
the check of the downloaded tree against the manifest (``differences``). Medians of a few runs.

    flock /tmp/sigserve-heavy.lock .venv/bin/python benchmarks/manifest_cost.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sigserve.ports import free_port

RUNS = 5


def _median_s(fn: Callable[[], Any], runs: int = RUNS) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def _log_sklearn(name: str) -> None:
    import mlflow
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True, as_frame=True)
    with mlflow.start_run():
        mlflow.sklearn.log_model(LogisticRegression(max_iter=500).fit(x, y), name="model",
                                 input_example=x.head(2), registered_model_name=name)


def _log_minilm(name: str) -> None:
    from sigserve.demo.register import log_embedding_version, minilm_model_dir

    log_embedding_version(name, model_dir=minilm_model_dir())


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="ss-bench-"))
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{home}/mlflow.db",
         "--artifacts-destination", str(home / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        import httpx

        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("mlflow server did not start")
            time.sleep(0.5)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        _measure(uri, home)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(home, ignore_errors=True)


def _measure(uri: str, home: Path) -> None:
    import mlflow.artifacts
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from controller.artifact_manifest import build_manifest
    from controller.registry import Registry
    from wire.artifact_manifest import differences

    registry = Registry(uri)
    print("| model | files | bytes | hashed bytes | controller read | of which manifest "
          "| replica download | replica check | manifest, all hashed | check, all hashed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, log in (("bench_sklearn", _log_sklearn), ("bench_minilm", _log_minilm)):
        log(name)
        read_s, facts = _median_s(lambda n=name: registry.artifact(n, "1"))
        repo = get_artifact_repository(facts.source, tracking_uri=uri)
        manifest_s, manifest = _median_s(lambda r=repo: build_manifest(r, read={}))
        # For comparison: no threshold, every byte hashed (what 64 MiB spares the controller).
        everything_s, everything = _median_s(
            lambda r=repo: build_manifest(r, read={}, hash_limit=1 << 62), 3
        )
        with tempfile.TemporaryDirectory() as tmp:
            download_s, local = _median_s(lambda s=facts.source, t=tmp: mlflow.artifacts
                                          .download_artifacts(artifact_uri=s, dst_path=t), 1)
            check_s, found = _median_s(lambda p=Path(local), m=manifest: differences(p, m))
            assert found == [], found
            check_all_s, found = _median_s(lambda p=Path(local), m=everything: differences(p, m))
            assert found == [], found
        total = sum(f.size for f in manifest)
        hashed = sum(f.size for f in manifest if f.sha256 is not None)
        print(f"| {name} | {len(manifest)} | {total / 2**20:.1f} MiB | {hashed / 2**20:.1f} MiB "
              f"| {read_s * 1000:.0f} ms | {manifest_s * 1000:.0f} ms "
              f"| {download_s * 1000:.0f} ms | {check_s * 1000:.0f} ms "
              f"| {everything_s * 1000:.0f} ms | {check_all_s * 1000:.0f} ms |")


if __name__ == "__main__":
    main()

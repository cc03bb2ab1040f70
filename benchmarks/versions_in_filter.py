"""``search_model_versions`` with ``name IN (...)`` against one call per name, on MLflow's SQL store
(issue 20: may the reconciler read many models' versions at once?).

    .venv/bin/python benchmarks/versions_in_filter.py [--models 200] [--versions 5]

Fills a SQLite registry in process (``--models`` models of ``--versions`` versions, from one bare
run, plus a model whose name holds a quote), then times, in process and over REST (an ``mlflow
server --workers 1`` on the same database), one ``IN`` call for k models against k calls of one
name each, for k in 1, 10, 50 and ``--models`` (medians of 5). Run it under the heavy lock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from sigserve.ports import free_port
from sigserve.processes import ManagedProcess

QUOTED = "it's"


def _quoted(names: list[str]) -> str:
    return ", ".join("'" + n.replace("'", "\\'") + "'" for n in names)


def _fill(client: Any, models: int, versions: int, artifacts: Path) -> None:
    run = client.create_run(client.create_experiment("e", artifact_location=str(artifacts)))
    source = f"runs:/{run.info.run_id}/model"
    for i in range(models):
        client.create_registered_model(f"m{i:04d}")
        for _ in range(versions):
            client.create_model_version(f"m{i:04d}", source, run_id=run.info.run_id)
    client.create_registered_model(QUOTED)
    client.create_model_version(QUOTED, source, run_id=run.info.run_id)


def _measure(client: Any, label: str, models: int, versions: int) -> None:
    for k in sorted({k for k in (1, 10, 50) if k < models} | {models}):
        names = [f"m{i:04d}" for i in range(k)]
        together, apart = [], []
        for _ in range(5):
            started = time.perf_counter()
            found = client.search_model_versions(f"name IN ({_quoted(names)})", max_results=200_000)
            together.append(time.perf_counter() - started)
            assert len(found) == k * versions, (len(found), k)
            started = time.perf_counter()
            for name in names:
                client.search_model_versions(f"name='{name}'", max_results=200)
            apart.append(time.perf_counter() - started)
        print(f"{label}, {k} models: one IN call {statistics.median(together) * 1000:.1f} ms, "
              f"{k} calls of one name {statistics.median(apart) * 1000:.1f} ms")
    found = client.search_model_versions(f"name IN ({_quoted([QUOTED, 'm0000'])})")
    print(f"{label}, a quoted name in IN: {sorted({v.name for v in found})}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--versions", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="ss-in-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        local = MlflowClient(tracking_uri=uri, registry_uri=uri)
        _fill(local, args.models, args.versions, Path(tmp) / "artifacts")
        _measure(local, "in process (SQLite)", args.models, args.versions)
        port = free_port()
        server = ManagedProcess(
            "mlflow server",
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
             "--artifacts-destination", f"{tmp}/served", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            env=dict(os.environ), log_path=Path(tmp) / "mlflow.log",
            health_url=f"http://127.0.0.1:{port}/health",
        ).start()  # fmt: skip
        try:
            server.wait_healthy(120)
            assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
            remote = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
            _measure(remote, "over REST (--workers 1)", args.models, args.versions)
        finally:
            server.stop()


if __name__ == "__main__":
    main()

"""Passes per second and publishes of the controller's worker, by concurrency, MLflow left out.

    .venv/bin/python benchmarks/worker_passes.py [--models 200] [--call-ms 20]
        [--concurrency 1 8] [--database-url URL] [--publish-ms 0]

The real worker, reconciler and store (SQLite in a temporary directory unless
``--database-url``), with a registry seam whose every call takes ``--call-ms`` (an artifact read
three times that, as it is three files and a listing): what the worker and the store cost around
MLflow's answers, and how much running passes side by side gains. Each of ``--models`` models
has one new version, so every pass is a decision, a publish and a write-back (three tags, the
alias). ``--publish-ms`` makes every publish that much longer, as reading every decision does in
a registry of thousands of models. Prints, per concurrency, passes per second and how many
publishes carried them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from typing import cast

from controller.artifacts import ArtifactFacts
from controller.broadcaster import TableBroadcaster
from controller.database import make_engine, migrate
from controller.environment import ArtifactEnvironment, ServingEnvironment
from controller.metrics import Metrics
from controller.reconciler import Reconciler
from controller.registry import ObservedModel, ObservedVersion, RegistryPort
from controller.store import Store
from controller.worker import Worker
from wire.routing_table import RoutingTable

ENV = ServingEnvironment(python_version="3.11.9", distributions={"mlflow-skinny": "3.17.2"})
SIGNATURE = {"inputs": json.dumps([{"type": "string", "name": "prompt", "required": True}]),
             "outputs": None, "params": None}


class SlowRegistry:
    """Every model has one READY version; every call answers after ``delay_s`` (MLflow's round
    trip), in the caller's thread."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def model_names(self) -> list[str]:
        return []

    def model(self, name: str) -> ObservedModel:
        time.sleep(self.delay_s)
        return ObservedModel(created_at=1, aliases={}, tags={})

    def versions(self, name: str) -> list[ObservedVersion]:
        time.sleep(self.delay_s)
        return [ObservedVersion("1", "READY", f"models:/{name}-1")]

    def artifact(self, name: str, version: str) -> ArtifactFacts:
        time.sleep(self.delay_s * 3)
        return ArtifactFacts(source=f"models:/{name}-1/artifacts", mlmodel_digest="0" * 64,
                             signature=SIGNATURE,
                             environment=ArtifactEnvironment([], "3.11.9", pickled=False))

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        time.sleep(self.delay_s)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        time.sleep(self.delay_s)


class SlowPublish(Store):
    """A publish that takes ``extra_s`` more: what reading every decision costs at scale."""

    extra_s = 0.0

    def publish(self) -> RoutingTable:
        time.sleep(self.extra_s)
        return super().publish()


def measure(
    concurrency: int, models: int, call_s: float, url: str | None, publish_s: float = 0.0
) -> tuple[float, int]:
    """(passes per second, publishes) for ``models`` passes at ``concurrency``."""
    home = tempfile.mkdtemp(prefix="sigserve-worker-bench-")
    engine = make_engine(url or f"sqlite:///{home}/c.db")
    migrate(engine)
    store, metrics = SlowPublish(engine), Metrics.create()
    store.extra_s = publish_s
    registry = cast(RegistryPort, SlowRegistry(call_s))
    worker = Worker(Reconciler(store, registry, ENV), store, registry, TableBroadcaster(),
                    metrics, resync_interval_s=3600, retry_initial_s=0.05, retry_max_s=1.0,
                    concurrency=concurrency)

    def sample(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    async def go() -> tuple[float, int]:
        await worker.prime(already_published=True)
        before = sample("sigserve_publish_seconds_count")
        passed: set[str] = set()
        done = asyncio.Event()

        def ended(name: str) -> None:  # every pass ends well here (told to the resync)
            passed.add(name)
            if len(passed) == models:
                done.set()

        worker.resync.passed = ended  # type: ignore[method-assign]
        started = time.perf_counter()
        run = asyncio.create_task(worker.run())
        for i in range(models):
            worker.enqueue(f"m{i:05}", f"webhook:bench-{i}")
        await done.wait()
        took = time.perf_counter() - started
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        return models / took, int(sample("sigserve_publish_seconds_count") - before)

    try:
        return asyncio.run(go())
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--call-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--database-url")
    parser.add_argument("--publish-ms", type=float, default=0.0,
                        help="added to every publish (a registry of thousands of models)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    for concurrency in args.concurrency:
        rate, publishes = measure(concurrency, args.models, args.call_ms / 1000,
                                  args.database_url, args.publish_ms / 1000)
        print(f"concurrency {concurrency}: {rate:.1f} passes/s, {publishes} publishes "
              f"for {args.models} decisions")


if __name__ == "__main__":
    main()

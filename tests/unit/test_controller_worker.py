"""The worker on a fake registry and a real store: de-duplicated queue, temporary errors retried
with backoff, permanent ones left to the resync, a publish after each change."""

from __future__ import annotations

import asyncio
from pathlib import Path

from controller.broadcaster import TableBroadcaster
from controller.database import make_engine, migrate
from controller.exceptions import RegistryRefused, RegistryUnavailable
from controller.metrics import Metrics
from controller.reconciler import Reconciler
from controller.registry import ObservedModel
from controller.store import Store
from controller.worker import Worker
from tests.unit.test_controller_reconciler import ENV, FakeRegistry, sig


class Flaky(FakeRegistry):
    """Answers ``model`` with the errors queued in ``errors`` first, counting the calls."""

    def __init__(self, errors: list[Exception], **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.errors = errors
        self.calls = 0

    def model(self, name: str) -> ObservedModel:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return super().model(name)

    def model_names(self) -> list[str]:
        return ["m"]


def worker_for(tmp_path: Path, registry: FakeRegistry) -> tuple[Worker, Store, TableBroadcaster]:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    store, broadcaster = Store(engine), TableBroadcaster()
    worker = Worker(Reconciler(store, registry, ENV), store, registry, broadcaster,
                    Metrics.create(), resync_interval_s=3600, retry_initial_s=0.05,
                    retry_max_s=0.1)
    return worker, store, broadcaster


async def settle(worker: Worker, seconds: float) -> None:
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(seconds)
    task.cancel()


def test_a_name_enqueued_many_times_is_reconciled_once_and_published(tmp_path: Path) -> None:
    registry = Flaky([], versions_={"1": ("models:/m-a", sig("prompt"))})
    worker, _, broadcaster = worker_for(tmp_path, registry)

    async def go() -> None:
        for _ in range(5):
            worker.enqueue("m", "webhook:x")
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0.5)
        assert registry.calls == 1
        # A fresh database: the table reaches serving after a full pass, not before.
        assert broadcaster.current is None
        await worker.prime(already_published=False)
        assert broadcaster.current is not None and "m" in broadcaster.current.models
        task.cancel()

    asyncio.run(go())
    assert broadcaster.current is not None and "m" in broadcaster.current.models


def test_a_temporary_error_is_retried_with_backoff_a_permanent_one_is_not(
    tmp_path: Path,
) -> None:
    registry = Flaky([RegistryUnavailable("timeout"), RegistryUnavailable("timeout")],
                     versions_={"1": ("models:/m-a", sig("prompt"))})
    worker, store, _ = worker_for(tmp_path, registry)

    async def go() -> None:
        worker.enqueue("m")
        await settle(worker, 1.0)

    asyncio.run(go())
    assert registry.calls == 3  # two failures, then the pass that decided
    assert store.load_model("m") is not None

    refused = Flaky([RegistryRefused("PERMISSION_DENIED")], versions_={})
    (tmp_path / "b").mkdir()
    worker, store, _ = worker_for(tmp_path / "b", refused)
    asyncio.run(_run_once(worker))
    assert refused.calls == 1  # no retry until the resync


async def _run_once(worker: Worker) -> None:
    worker.enqueue("m")
    await settle(worker, 0.5)



def test_a_database_locked_by_another_writer_is_retried_with_backoff(tmp_path: Path) -> None:
    import sqlite3

    registry = Flaky([], versions_={"1": ("models:/m-a", sig("prompt"))})
    engine = make_engine(f"sqlite:///{tmp_path}/c.db", busy_timeout_s=0.05)
    migrate(engine)
    store, broadcaster = Store(engine), TableBroadcaster()
    worker = Worker(Reconciler(store, registry, ENV), store, registry, broadcaster,
                    Metrics.create(), resync_interval_s=3600, retry_initial_s=0.05,
                    retry_max_s=0.1)
    other = sqlite3.connect(tmp_path / "c.db", isolation_level=None)

    async def go() -> None:
        other.execute("BEGIN EXCLUSIVE")
        worker.enqueue("m", "webhook:x")
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0.5)
        assert store.load_model("m") is None  # nothing half-written while locked
        other.execute("ROLLBACK")
        await asyncio.sleep(0.5)  # no resync in this test: only the retry can decide it
        task.cancel()

    asyncio.run(go())
    other.close()
    assert registry.calls >= 2
    stored = store.load_model("m")
    assert stored is not None and stored.versions["1"].state.value == "live"

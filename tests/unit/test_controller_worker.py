"""The worker on a fake registry and a real store: de-duplicated queue, temporary errors retried
with backoff, permanent ones left to the resync, a publish after each change."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
        self.asked: list[str] = []  # the names, in the order their passes read them

    def model(self, name: str) -> ObservedModel:
        self.calls += 1
        if not threading.current_thread().name.startswith("sigserve-write-back"):
            self.asked.append(name)  # a pass's read (the write-back lane reads on its own)
        if self.errors:
            raise self.errors.pop(0)
        return super().model(name)

    def model_names(self) -> list[str]:
        return ["m"]


def worker_for(
    tmp_path: Path, registry: FakeRegistry, **kw: Any
) -> tuple[Worker, Store, TableBroadcaster]:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    store, broadcaster = Store(engine), TableBroadcaster()
    worker = Worker(Reconciler(store, registry, ENV), store, registry, broadcaster,
                    kw.pop("metrics", None) or Metrics.create(), resync_interval_s=3600,
                    retry_initial_s=0.05, retry_max_s=0.1, **kw)
    return worker, store, broadcaster


def reconciles(metrics: Metrics, result: str) -> float:
    """How many passes ended with ``result``, as the controller's /metrics counts them."""
    value = metrics.registry.get_sample_value("sigserve_reconciles_total", {"result": result})
    return value or 0.0


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``condition`` until it holds, failing the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def test_a_name_enqueued_many_times_is_reconciled_once_and_published(tmp_path: Path) -> None:
    registry = Flaky([], versions_={"1": ("models:/m-a", sig("prompt"))})
    metrics = Metrics.create()
    worker, _, broadcaster = worker_for(tmp_path, registry, metrics=metrics)

    async def go() -> None:
        for _ in range(5):
            worker.enqueue("m", "webhook:x")
        # The queue is first in, first out: once "after" is reconciled, every pass of "m"
        # that was queued has run.
        worker.enqueue("after")
        task = asyncio.create_task(worker.run())
        await until(lambda: "after" in registry.asked)
        assert registry.asked == ["m", "after"]
        # A fresh database: the table reaches serving after a full pass, not before.
        assert broadcaster.current is None
        await worker.prime(already_published=False)
        assert broadcaster.current is not None and "m" in broadcaster.current.models
        task.cancel()

    asyncio.run(go())
    assert broadcaster.current is not None and "m" in broadcaster.current.models


def test_a_temporary_error_is_retried_with_backoff_a_permanent_one_is_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Flaky([RegistryUnavailable("timeout"), RegistryUnavailable("timeout")],
                     versions_={"1": ("models:/m-a", sig("prompt"))})
    metrics = Metrics.create()
    worker, store, _ = worker_for(tmp_path, registry, metrics=metrics)
    asyncio.run(_run_until(worker, lambda: reconciles(metrics, "ok") == 1))
    assert len(registry.asked) == 3  # two failures, then the pass that decided
    assert reconciles(metrics, "temporary_error") == 2
    assert store.load_model("m") is not None

    refused = Flaky([RegistryRefused("PERMISSION_DENIED")], versions_={})
    (tmp_path / "b").mkdir()
    metrics = Metrics.create()
    worker, store, _ = worker_for(tmp_path / "b", refused, metrics=metrics)
    caplog.clear()  # the retries above said "retrying in"
    with caplog.at_level(logging.WARNING, logger="controller.worker"):
        asyncio.run(_run_until(worker, lambda: reconciles(metrics, "permanent_error") == 1))
    assert refused.calls == 1 and reconciles(metrics, "temporary_error") == 0
    # No retry until the resync: the worker schedules one only through its backoff, which
    # says so ("retrying in"), and it did not.
    assert not [r for r in caplog.records if "retrying in" in r.getMessage()]


async def _run_until(worker: Worker, condition: Callable[[], bool]) -> None:
    worker.enqueue("m")
    task = asyncio.create_task(worker.run())
    await until(condition)
    task.cancel()



def test_a_database_locked_by_another_writer_is_retried_with_backoff(tmp_path: Path) -> None:
    import sqlite3

    registry = Flaky([], versions_={"1": ("models:/m-a", sig("prompt"))})
    engine = make_engine(f"sqlite:///{tmp_path}/c.db", busy_timeout_s=0.05)
    migrate(engine)
    store, broadcaster, metrics = Store(engine), TableBroadcaster(), Metrics.create()
    worker = Worker(Reconciler(store, registry, ENV), store, registry, broadcaster,
                    metrics, resync_interval_s=3600, retry_initial_s=0.05, retry_max_s=0.1)
    other = sqlite3.connect(tmp_path / "c.db", isolation_level=None)

    async def go() -> None:
        other.execute("BEGIN EXCLUSIVE")
        worker.enqueue("m", "webhook:x")
        task = asyncio.create_task(worker.run())
        # The pass met the lock (twice: it was retried while the lock was held)...
        await until(lambda: reconciles(metrics, "temporary_error") >= 2)
        assert store.load_model("m") is None  # ...and wrote nothing half
        other.execute("ROLLBACK")
        # No resync in this test: only the retry can decide it.
        await until(lambda: reconciles(metrics, "ok") == 1)
        task.cancel()

    asyncio.run(go())
    other.close()
    assert registry.calls >= 2
    stored = store.load_model("m")
    assert stored is not None and stored.versions["1"].state.value == "live"


class Partly(FakeRegistry):
    """Lists models ``a`` and ``b``; ``b``'s reads fail temporarily while ``b_down`` is set.
    Each failure moves ``clock`` a minute on: the retries span minutes of the controller's time
    in a fraction of a second of the test's."""

    def __init__(self, clock: list[float], **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.clock = clock
        self.b_down = True
        self.b_failures = 0

    def model_names(self) -> list[str]:
        return ["a", "b"]

    def model(self, name: str) -> ObservedModel:
        if name == "b" and self.b_down:
            self.b_failures += 1
            self.clock[0] += 60.0
            raise RegistryUnavailable("503 from the registry")
        return super().model(name)


def test_a_new_epochs_first_table_waits_until_every_listed_model_was_reconciled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fresh database (a new epoch, which replicas obey at once): its first table must not
    reach serving while one listed model still fails, or replicas would answer 404 for it."""
    clock = [1000.0]
    registry = Partly(clock, versions_={"1": ("models:/x-1", sig("prompt"))})
    worker, store, broadcaster = worker_for(tmp_path, registry, clock=lambda: clock[0])
    caplog.set_level(logging.INFO, logger="controller")

    async def go() -> None:
        run = asyncio.create_task(worker.run())
        priming = asyncio.create_task(worker.prime(already_published=False))
        deadline = asyncio.get_running_loop().time() + 10
        # b fails again and again, past what was a 120 s bound on the controller's clock.
        while registry.b_failures < 4:
            assert asyncio.get_running_loop().time() < deadline, registry.b_failures
            await asyncio.sleep(0.01)
        assert clock[0] - 1000.0 > 120
        assert store.load_model("a") is not None  # a was decided meanwhile...
        assert broadcaster.current is None  # ...but the new epoch was not shown to serving
        assert store.published() is None
        assert not priming.done()
        # The operator is told what the first table waits for, and for how long.
        waits = [r for r in caplog.records if getattr(r, "event", None) == "priming"]
        assert waits and waits[-1].waiting_for == ["b"]  # type: ignore[attr-defined]
        assert waits[-1].waited_s > 120  # type: ignore[attr-defined]
        registry.b_down = False
        await asyncio.wait_for(priming, 10)
        table = broadcaster.current
        assert table is not None and {"a", "b"} <= set(table.models)
        assert table.models["b"].versions["1"].state.value == "live"
        run.cancel()

    asyncio.run(go())


class Held(FakeRegistry):
    """Reading version 1's artifact waits until the test lets it go."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.reached, self.release = threading.Event(), threading.Event()

    def artifact(self, name: str, version: str) -> Any:
        self.reached.set()
        assert self.release.wait(30), "the test never let the read go"
        return super().artifact(name, version)


def test_a_pass_in_flight_when_the_worker_steps_down_writes_nothing(tmp_path: Path) -> None:
    """A leader that steps down forgets its queue (``reset``); the pass its thread is still
    running must not commit afterwards (the next leader decides from its own reads)."""
    registry = Held(versions_={"1": ("models:/m-a", sig("prompt"))})
    metrics = Metrics.create()
    worker, store, broadcaster = worker_for(tmp_path, registry, metrics=metrics)

    def passes() -> float:
        return metrics.registry.get_sample_value("sigserve_reconcile_seconds_count") or 0.0

    async def go() -> None:
        run = asyncio.create_task(worker.run())
        worker.enqueue("m", "webhook:x")
        assert await asyncio.to_thread(registry.reached.wait, 30)
        worker.reset()  # stepped down while the pass reads the artifact
        registry.release.set()
        deadline = time.monotonic() + 10
        while passes() < 1:  # the pass ends
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        run.cancel()

    asyncio.run(go())
    assert store.load_model("m") is None  # nothing of the pass was written
    assert store.events("m", limit=10) == []
    assert broadcaster.current is None and registry.writes == []


def test_a_pass_whose_model_was_written_since_it_read_it_is_requeued_and_reads_again(
    tmp_path: Path,
) -> None:
    """The worker's pass reads versions 1 (and is held reading its artifact) while version 2 is
    registered and another reconcile decides both: the held pass must not drop version 2; its
    write is refused, the model requeued at once, and the next pass finds it all decided."""
    registry = Held(versions_={"1": ("models:/m-a", sig("prompt"))})
    metrics = Metrics.create()
    worker, store, _ = worker_for(tmp_path, registry, metrics=metrics)

    def count(result: str) -> float:
        value = metrics.registry.get_sample_value("sigserve_reconciles_total",
                                                  {"result": result})
        return value or 0.0

    async def go() -> None:
        run = asyncio.create_task(worker.run())
        worker.enqueue("m", "webhook:x")
        assert await asyncio.to_thread(registry.reached.wait, 30)
        registry.versions_["2"] = ("models:/m-b", sig("prompt"))  # registered meanwhile
        other = FakeRegistry(versions_=registry.versions_)  # another reconcile's read of it
        await asyncio.to_thread(Reconciler(store, other, ENV, write_back=False).reconcile, "m")
        registry.release.set()
        deadline = time.monotonic() + 10
        while count("ok") < 1:  # the conflict, then a pass that ends
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        run.cancel()

    asyncio.run(go())
    assert count("temporary_error") == 1 and count("ok") == 1
    stored = store.load_model("m")
    assert stored is not None and set(stored.versions) == {"1", "2"}
    assert stored.versions["2"].state.value == "live"

"""The worker at registry scale: webhooks before the resync's names, several models at once but one
pass per model, publishes coalesced, a step-down that stops every pass in flight.

The reconciler is the real one on a fake registry and a real SQLite store, wrapped by a seam
that counts the passes in flight and holds the ones a test names until it lets them go (thread
events, never sleeps). The worker is the thing under test.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.broadcaster import TableBroadcaster
from controller.database import make_engine, migrate
from controller.exceptions import RegistryUnavailable
from controller.metrics import Metrics
from controller.reconciler import Outcome, Reconciler
from controller.registry import ObservedModel
from controller.store import Store
from controller.worker import Worker
from tests.unit.test_controller_reconciler import ENV, FakeRegistry, sig
from wire import logs
from wire.routing_table import RoutingTable, VersionState

WAIT_S = 10.0


class Passes:
    """A Reconciler-like seam around the real one: counts the passes in flight (per name and in
    all) and the most seen at once; a pass whose name is in ``holds`` waits for its event."""

    def __init__(self, store: Store, registry: FakeRegistry) -> None:
        self._inner = Reconciler(store, registry, ENV)
        self._lock = threading.Lock()
        self.holds: dict[str, threading.Event] = {}
        self.before: Callable[[str], None] = lambda name: None
        self.order: list[str] = []
        self.running: Counter[str] = Counter()
        self.most_per_name: Counter[str] = Counter()
        self.most = 0

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(self.running.values())

    def reconcile(
        self, name: str, actor: str = "resync", *, fence: Callable[[], None] = lambda: None
    ) -> Outcome:
        with self._lock:
            self.order.append(name)
            self.running[name] += 1
            self.most_per_name[name] = max(self.most_per_name[name], self.running[name])
            self.most = max(self.most, sum(self.running.values()))
        try:
            self.before(name)
            hold = self.holds.get(name)
            if hold is not None:
                assert hold.wait(WAIT_S), f"the test never let {name}'s pass go"
            return self._inner.reconcile(name, actor, fence=fence)
        finally:
            with self._lock:
                self.running[name] -= 1

    def write_back(
        self,
        name: str,
        leading: Callable[[], bool] = lambda: True,
        wanted: Callable[[], bool] = lambda: False,
    ) -> str | None:
        return self._inner.write_back(name, leading, wanted)


class Witness(FakeRegistry):
    """Every model has version 1; each alias write-back notes whether serving's table already
    had that version live (the table the controller hands to the long-poll)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(versions_={"1": ("models:/x-1", sig("prompt"))}, **kw)
        self.broadcaster: TableBroadcaster | None = None
        self.live_when_written: dict[str, bool] = {}
        self.down: set[str] = set()
        self.aliases_of: dict[str, dict[str, str]] = {}

    def model(self, name: str) -> ObservedModel:
        if name in self.down:
            raise RegistryUnavailable("503 from the registry")
        # Each model's own aliases (the fake keeps one set for all).
        return replace(super().model(name), aliases=dict(self.aliases_of.get(name, {})))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        table = self.broadcaster.current if self.broadcaster is not None else None
        self.live_when_written[name] = _live(table, name)
        super().set_alias(name, alias, version)
        self.aliases_of.setdefault(name, {})[alias] = version


class HeldPublish(Store):
    """Counts publishes; while ``hold`` is set, a publish waits, its table built, until the
    test releases it (``held`` says one is waiting)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.publishes = 0
        self.hold = False
        self.held, self.release = threading.Event(), threading.Event()

    def publish(self) -> RoutingTable:
        table = super().publish()
        self.publishes += 1
        if self.hold:
            self.held.set()
            assert self.release.wait(WAIT_S), "the test never let the publish go"
        return table


def _live(table: RoutingTable | None, name: str) -> bool:
    model = table.models.get(name) if table is not None else None
    entry = model.versions.get("1") if model is not None else None
    return entry is not None and entry.state is VersionState.LIVE


def stack(
    tmp_path: Path, concurrency: int
) -> tuple[Worker, Passes, Witness, HeldPublish, TableBroadcaster, Metrics]:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    store, broadcaster, metrics = HeldPublish(engine), TableBroadcaster(), Metrics.create()
    registry = Witness()
    registry.broadcaster = broadcaster
    passes = Passes(store, registry)
    worker = Worker(passes, store, registry, broadcaster, metrics,  # type: ignore[arg-type]
                    resync_interval_s=3600, retry_initial_s=0.05, retry_max_s=0.1,
                    concurrency=concurrency)
    return worker, passes, registry, store, broadcaster, metrics


async def until(condition: Callable[[], bool], what: str = "the condition") -> None:
    """Poll ``condition`` until it holds, failing the test after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} never held"
        await asyncio.sleep(0.005)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_webhooks_name_is_taken_before_500_names_the_resync_queued(tmp_path: Path) -> None:
    """One pass at a time: the resync queued 500 names, the first is being reconciled when a
    webhook asks for another model: that model is next, not 500th. A resync name a webhook asks
    for moves up too, and is reconciled once."""
    worker, passes, _, _, _, metrics = stack(tmp_path, concurrency=1)
    resynced = [f"r{i:03}" for i in range(500)]
    passes.holds["r000"] = threading.Event()

    async def go() -> None:
        for name in resynced:
            worker.enqueue(name, "resync")
        run = asyncio.create_task(worker.run())
        await until(lambda: passes.order == ["r000"], "the first resync pass")
        worker.enqueue("w", "webhook:d-1")
        worker.enqueue("r250", "webhook:d-2")
        worker.enqueue("w", "resync")  # the resync asks too: it stays in the events lane
        # What an operator sees meanwhile: two names ahead of the resync's 498 (r250 moved up,
        # not queued twice), one pass running.
        assert sample(metrics, "sigserve_reconcile_queue_depth", lane="events") == 2
        assert sample(metrics, "sigserve_reconcile_queue_depth", lane="resync") == 498
        assert sample(metrics, "sigserve_reconcile_in_flight") == 1
        passes.holds["r000"].set()
        # Then the resync's names, in their order, r250 not among them again.
        await until(lambda: len(passes.order) >= 5, "the next passes")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(go())
    assert passes.order[:5] == ["r000", "w", "r250", "r001", "r002"]


def test_models_are_reconciled_side_by_side_each_by_one_pass_at_a_time(tmp_path: Path) -> None:
    """While m's pass is held, other models are reconciled; m asked for again meanwhile waits
    for its pass and is then reconciled once more, never by two passes at once."""
    worker, passes, _, store, _, _ = stack(tmp_path, concurrency=4)
    passes.holds["m"] = threading.Event()

    async def go() -> None:
        run = asyncio.create_task(worker.run())
        worker.enqueue("m", "webhook:d-1")
        await until(lambda: passes.order == ["m"], "m's first pass")
        for actor in ("webhook:d-2", "resync", "webhook:d-3"):
            worker.enqueue("m", actor)
        worker.enqueue("a", "webhook:d-4")
        worker.enqueue("b", "resync")
        await until(lambda: store.load_model("a") is not None and store.load_model("b")
                    is not None, "a and b decided while m's pass is held")
        assert passes.order.count("m") == 1
        passes.holds["m"].set()
        await until(lambda: passes.order.count("m") == 2 and passes.in_flight == 0,
                    "m's second pass")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(go())
    assert passes.most_per_name["m"] == 1
    assert passes.order.count("m") == 2


def test_n_passes_run_at_once_and_no_more(tmp_path: Path) -> None:
    """With concurrency 4, four passes are in flight together (each waits until all four have
    entered); a fifth model waits for a slot."""
    worker, passes, _, store, _, metrics = stack(tmp_path, concurrency=4)
    together = threading.Barrier(4, timeout=WAIT_S)
    in_flight_seen: list[float] = []

    def meet(name: str) -> None:
        if name != "e" and together.wait() == 0:
            in_flight_seen.append(sample(metrics, "sigserve_reconcile_in_flight"))

    passes.before = meet

    async def go() -> None:
        run = asyncio.create_task(worker.run())
        for name in "abcde":
            worker.enqueue(name, "resync")
        await until(lambda: sample(metrics, "sigserve_reconciles_total", result="ok") == 5,
                    "five passes")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(go())
    assert passes.most == 4
    assert in_flight_seen == [4]
    assert all(store.load_model(n) is not None for n in "abcde")


def test_passes_that_finish_together_share_one_publish_and_write_back_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """a commits and its publish begins; b, c and d commit while it runs: that publish was
    built before their decisions, so they wait for the next one, which carries all three (its
    log line names their three deliveries). No verdict reaches the registry before serving's
    table has it live."""
    caplog.handler.addFilter(logs.TrailFilter())
    caplog.set_level(logging.INFO, logger="controller.publisher")
    worker, passes, registry, store, broadcaster, metrics = stack(tmp_path, concurrency=4)
    for name in "abcd":
        passes.holds[name] = threading.Event()

    def published() -> int:
        return store.publishes

    async def go() -> None:
        await worker.prime(already_published=True)
        assert published() == 1
        run = asyncio.create_task(worker.run())
        for name in "abcd":
            worker.enqueue(name, f"webhook:d-{name}")
        await until(lambda: passes.in_flight == 4, "four passes in flight")
        store.hold = True
        passes.holds["a"].set()
        assert await asyncio.to_thread(store.held.wait, WAIT_S), "a's publish never began"
        for name in "bcd":
            passes.holds[name].set()
        # b, c and d committed and asked for a publish while a's was running (a pass counts
        # itself ok and asks in one step of the event loop).
        await until(lambda: sample(metrics, "sigserve_reconciles_total", result="ok") == 4,
                    "b, c and d committed")
        assert published() == 2 and registry.live_when_written == {}
        store.hold = False
        store.release.set()
        await until(lambda: len(registry.live_when_written) == 4, "every write-back")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(go())
    assert published() == 3  # priming, a's, then one for b, c and d
    assert registry.live_when_written == {n: True for n in "abcd"}
    assert all(_live(broadcaster.current, n) for n in "abcd")
    lines = [r for r in caplog.records
             if getattr(r, "event", None) == "publish" and getattr(r, "changes", None)]
    carried = [(sorted({c.split("/")[0].split("@")[0] for c in r.changes}),  # type: ignore[attr-defined]
                sorted(getattr(r, "delivery_ids", []))) for r in lines]
    assert carried == [(["a"], ["d-a"]), (["b", "c", "d"], ["d-b", "d-c", "d-d"])]


def test_a_step_down_during_concurrent_passes_commits_none_of_them(tmp_path: Path) -> None:
    """Three passes are held mid-read when the controller stops leading (its loops cancelled,
    then ``reset``, as LeaderDuties.stop does): their threads run on, and none commits."""
    worker, passes, registry, store, broadcaster, _ = stack(tmp_path, concurrency=3)
    for name in "abc":
        passes.holds[name] = threading.Event()

    async def go() -> None:
        await worker.prime(already_published=True)
        run = asyncio.create_task(worker.run())
        for name in "abc":
            worker.enqueue(name, "webhook:d")
        await until(lambda: passes.in_flight == 3, "three passes in flight")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        worker.reset()
        for name in "abc":
            passes.holds[name].set()
        await until(lambda: passes.in_flight == 0, "the passes' threads to end")

    asyncio.run(go())
    assert [store.load_model(n) for n in "abc"] == [None, None, None]
    assert registry.writes == []
    assert broadcaster.current is not None and broadcaster.current.models == {}


def test_the_resync_is_told_how_each_pass_ended(tmp_path: Path) -> None:
    """A committed pass with nothing left to retry is passed; one that failed is failed (the
    resync must come back to it whatever the registry's listing says)."""
    worker, _, registry, _, _, _ = stack(tmp_path, concurrency=2)
    registry.down.add("b")
    told: list[tuple[str, str]] = []
    worker.resync.passed = lambda name: told.append(("passed", name))  # type: ignore[method-assign]
    worker.resync.failed = lambda name: told.append(("failed", name))  # type: ignore[method-assign]

    async def go() -> None:
        run = asyncio.create_task(worker.run())
        worker.enqueue("a", "resync")
        worker.enqueue("b", "resync")
        await until(lambda: {("passed", "a"), ("failed", "b")} <= set(told),
                    "a passed and b failed")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(go())
    assert ("passed", "a") in told and ("failed", "a") not in told
    assert ("failed", "b") in told and ("passed", "b") not in told


def test_priming_tells_of_failures_in_time_proportional_to_the_registry() -> None:
    """A fresh database priming 20,000 models while the registry fails each of them: every failed
    pass is told to priming on the event loop, and must not cost a pass over all 20,000."""
    import logging

    from controller.priming import Priming

    names = [f"m{i:05}" for i in range(20_000)]

    async def go() -> float:
        priming = Priming(time.monotonic, report_every_s=3600)
        priming.listed(names)
        started = time.perf_counter()
        for name in names:
            priming.failed(name)
        for name in names:
            priming.reconciled(name)
        took = time.perf_counter() - started
        await asyncio.wait_for(priming.wait(), WAIT_S)
        return took

    logging.getLogger("controller.priming").disabled = True
    try:
        took = asyncio.run(go())
    finally:
        logging.getLogger("controller.priming").disabled = False
    assert took < 1.0, f"{took:.2f} s on the event loop for 20,000 failures"


def test_passes_waiting_for_a_publish_leave_their_slot_to_other_models(tmp_path: Path) -> None:
    """A publish that takes long (it reads every decision: seconds at registry scale) must not
    stop the worker: with two slots, a and b wait for the held publish, and c and d are still
    read and decided meanwhile; the publish after it carries them all."""
    worker, _, registry, store, broadcaster, metrics = stack(tmp_path, concurrency=2)

    async def go() -> None:
        await worker.prime(already_published=True)
        run = asyncio.create_task(worker.run())
        store.hold = True
        worker.enqueue("a", "webhook:d-a")
        assert await asyncio.to_thread(store.held.wait, WAIT_S), "a's publish never began"
        for name in "bcd":
            worker.enqueue(name, f"webhook:d-{name}")
        # Decided, and asking for a publish (a pass counts itself ok and asks in one step).
        await until(lambda: sample(metrics, "sigserve_reconciles_total", result="ok") == 4,
                    "b, c and d decided while a's publish is held")
        assert registry.live_when_written == {}
        store.hold = False
        store.release.set()
        await until(lambda: len(registry.live_when_written) == 4, "every write-back")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(go())
    assert registry.live_when_written == {n: True for n in "abcd"}
    assert store.publishes == 3  # priming, a's, then one for b, c and d
    assert all(_live(broadcaster.current, n) for n in "abcd")

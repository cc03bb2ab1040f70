"""The write-back lane: decisions published without waiting for the registry's writes, written
once per model however often decided before, retried, and derived from the store's marks.

The reconciler and the store are real (SQLite); the registry is the reconciler tests' fake, whose
writes a test may hold (thread events, never sleeps). The lane and the worker are under test.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.broadcaster import TableBroadcaster
from controller.database import make_engine, migrate
from controller.exceptions import RegistryRefused, RegistryUnavailable
from controller.metrics import Metrics
from controller.own_writes import OwnWrites, alias_set, tag_set
from controller.reconciler import Reconciler
from controller.store import Store
from controller.worker import Worker
from controller.write_back_lane import WriteBackLane
from tests.unit.test_controller_reconciler import ENV, FakeRegistry, sig
from wire.routing_table import VersionState

WAIT_S = 10.0


class Held(FakeRegistry):
    """A registry whose version-tag writes wait while ``hold`` is clear, and fail while
    ``refuse`` is set: for now (an outage), or for good with ``for_good``."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.hold = threading.Event()
        self.hold.set()
        self.refuse = False
        self.for_good = False
        self.tag_writes = 0

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        assert self.hold.wait(WAIT_S), "the test never let the write go"
        self.tag_writes += 1
        if self.refuse and self.for_good:
            raise RegistryRefused("PERMISSION_DENIED: 403 on a tag write")
        if self.refuse:
            raise RegistryUnavailable("503 Service Unavailable")
        super().set_version_tag(name, version, key, value)


class Listed(FakeRegistry):
    def model_names(self) -> list[str]:
        return ["m"]


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    return Store(engine)


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} never held"
        await asyncio.sleep(0.005)


def live(broadcaster: TableBroadcaster, name: str) -> bool:
    table = broadcaster.current
    model = table.models.get(name) if table is not None else None
    entry = model.versions.get("1") if model is not None else None
    return entry is not None and entry.state is VersionState.LIVE


def test_a_decision_is_published_while_an_earlier_write_back_is_still_waiting(
    store: Store,
) -> None:
    """One pass at a time, and a's verdict tags held in the registry: b is still decided and
    published (the write-back held a's pass, and so the only slot, before)."""
    registry = Held(versions_={"1": ("models:/m-a", sig("prompt"))})
    broadcaster = TableBroadcaster()
    worker = Worker(Reconciler(store, registry, ENV), store, registry, broadcaster,
                    Metrics.create(), resync_interval_s=3600, retry_initial_s=0.05,
                    retry_max_s=0.1, concurrency=1)
    registry.hold.clear()

    async def go() -> None:
        await worker.prime(already_published=True)
        run = asyncio.create_task(worker.run())
        worker.enqueue("a", "webhook:d-a")
        await until(lambda: live(broadcaster, "a"), "a published")
        await until(lambda: len(worker.write_backs._running) == 1, "a's write-back under way")
        worker.enqueue("b", "webhook:d-b")
        await until(lambda: live(broadcaster, "b"), "b published while a's write-back waits")
        assert registry.writes == []
        registry.hold.set()
        await until(lambda: store.behind_write_back() == [], "both written back")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(go())
    assert sorted({w[0] for w in registry.writes}) == ["alias", "tag"]


def test_a_model_decided_twice_before_its_write_back_ran_is_written_once(store: Store) -> None:
    """v1 decided, then v2 registered and decided before the lane ran: one write of each tag
    and of the alias, all of them remembered as the controller's own, the model marked."""
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt"))})
    memory = OwnWrites()
    reconciler = Reconciler(store, registry, ENV, own_writes=memory)
    backlog = True
    lane = WriteBackLane(reconciler.write_back, busy=lambda name: False,
                         backlog=lambda: backlog, max_defer_s=WAIT_S)

    async def go() -> None:
        nonlocal backlog
        run = asyncio.create_task(lane.run())
        reconciler.reconcile("m")
        lane.add("m")
        registry.versions_["2"] = ("models:/m-b", sig("prompt"))
        reconciler.reconcile("m")
        lane.add("m")
        await asyncio.sleep(0.1)
        assert registry.writes == []  # the worker has a backlog: decisions first
        assert store.behind_write_back() == ["m"]
        backlog = False
        await until(lambda: store.behind_write_back() == [], "m written back")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(go())
    tags = [w for w in registry.writes if w[0] == "tag"]
    assert len(tags) == len(set(tags)) == 6  # three tags on each version, once
    record = store.load_model("m")
    assert record is not None
    assert [w for w in registry.writes if w[0] == "alias"] == [
        ("alias", "serving", record.default_version)
    ]
    for kind, *rest in registry.writes:
        assert memory.consume(tag_set("m", *rest) if kind == "tag" else alias_set("m", *rest))
    assert record.alias_seen == record.default_version


def test_a_write_back_that_failed_for_now_is_retried_and_marked_only_once_written(
    store: Store,
) -> None:
    registry = Held(versions_={"1": ("models:/m-a", sig("prompt"))})
    registry.refuse = True
    reconciler = Reconciler(store, registry, ENV)
    lane = WriteBackLane(reconciler.write_back, busy=lambda name: False,
                         backlog=lambda: False, retry_initial_s=0.05, retry_max_s=0.05)

    async def go() -> None:
        run = asyncio.create_task(lane.run())
        reconciler.reconcile("m")
        lane.add("m")
        await until(lambda: lane._attempts["m"] >= 2, "two refused attempts")
        assert store.behind_write_back() == ["m"]
        registry.refuse = False
        await until(lambda: store.behind_write_back() == [], "written back once allowed")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(go())
    record = store.load_model("m")
    assert record is not None and record.registry_warning is None
    assert registry.tags["1"]["sigserve.state"] == "live"


def test_a_write_back_refused_for_good_is_recorded_logged_once_and_not_retried(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A 403 on a tag write: the refusal is on the record, one line in the log, counted as
    refused in the backlog, and not tried again by a resync or a pass that changed nothing;
    the model decided anew, or the full resync, tries it once more."""
    registry = Held(versions_={"1": ("models:/m-a", sig("prompt"))})
    registry.refuse = registry.for_good = True
    reconciler = Reconciler(store, registry, ENV)
    lane = WriteBackLane(reconciler.write_back, busy=lambda name: False,
                         backlog=lambda: False, retry_initial_s=0.01, retry_max_s=0.01)

    async def go() -> None:
        run = asyncio.create_task(lane.run())
        reconciler.reconcile("m")
        lane.add("m")
        await until(lambda: lane.backlog() == (0, 1), "m refused for good")
        tried = registry.tag_writes
        lane.behind("m")  # a resync finds it behind
        lane.add("m", changed=False)  # a pass that decided nothing new
        await asyncio.sleep(0.1)
        assert registry.tag_writes == tried
        assert lane.backlog() == (0, 1)
        lane.retry_refused()  # the full resync
        lane.behind("m")
        await until(lambda: registry.tag_writes > tried, "tried again at the full resync")
        await until(lambda: lane.backlog() == (0, 1), "refused again")
        registry.refuse = False
        lane.add("m", changed=True)  # decided anew
        await until(lambda: store.behind_write_back() == [], "written back once allowed")
        await until(lambda: lane.backlog() == (0, 0), "the backlog empty")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    with caplog.at_level("WARNING"):
        asyncio.run(go())
    refusals = [r for r in caplog.records if "for good" in r.getMessage()]
    assert len(refusals) == 2  # once, and once more at the full resync
    assert not [r for r in caplog.records if "trying again" in r.getMessage()]
    assert registry.tags["1"]["sigserve.state"] == "live"


def test_the_write_back_backlog_is_a_gauge_of_models_not_written_back(store: Store) -> None:
    registry = Held(versions_={"1": ("models:/m-a", sig("prompt"))})
    registry.hold.clear()
    metrics = Metrics.create()
    worker = Worker(Reconciler(store, registry, ENV), store, registry, TableBroadcaster(),
                    metrics, resync_interval_s=3600, retry_initial_s=0.05, retry_max_s=0.1)

    def gauge(state: str) -> float | None:
        return metrics.registry.get_sample_value("sigserve_write_back_backlog", {"state": state})

    async def go() -> None:
        run = asyncio.create_task(worker.write_backs.run())
        Reconciler(store, registry, ENV).reconcile("m")
        await until(lambda: gauge("behind") == 1, "m counted behind")  # a scrape late
        assert (gauge("queued"), gauge("refused")) == (0, 0)
        worker.write_backs.add("m")
        assert gauge("queued") == 1
        await until(lambda: "m" in worker.write_backs._running, "m being written")
        assert (gauge("behind"), gauge("queued")) == (1, 1)  # held in its write
        registry.refuse = registry.for_good = True
        registry.hold.set()
        await until(lambda: gauge("refused") == 1, "m refused for good")
        assert (gauge("behind"), gauge("queued")) == (1, 0)
        registry.refuse = False
        worker.write_backs.add("m", changed=True)
        await until(lambda: gauge("behind") == 0, "m written back")
        await until(lambda: gauge("queued") == 0, "the lane done")
        assert gauge("refused") == 0
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(go())


class SlowCount(Store):
    """A store whose count of models behind waits for the test, noting the thread it ran on."""

    def __init__(self, engine: object) -> None:
        super().__init__(engine)  # type: ignore[arg-type]
        self.go = threading.Event()
        self.counted_on: list[str] = []

    def count_behind_write_back(self) -> int:
        self.counted_on.append(threading.current_thread().name)
        self.go.wait(2.0)  # never released without the fix: its scrape waits it out
        return super().count_behind_write_back()


def test_a_scrape_never_waits_for_the_count_of_models_behind(tmp_path: Path) -> None:
    """/metrics runs on the event loop: the COUNT runs in a thread of its own and the gauge
    answers the last one finished (NaN before the first), so a slow database holds no scrape."""
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    store = SlowCount(engine)
    registry = Held(versions_={"1": ("models:/m-a", sig("prompt"))})
    metrics = Metrics.create()
    Worker(Reconciler(store, registry, ENV), store, registry, TableBroadcaster(), metrics,
           resync_interval_s=3600, retry_initial_s=0.05, retry_max_s=0.1)  # fmt: skip
    Reconciler(store, registry, ENV).reconcile("m")

    def behind() -> float | None:
        return metrics.registry.get_sample_value("sigserve_write_back_backlog",
                                                 {"state": "behind"})  # fmt: skip

    began = time.monotonic()
    first = behind()
    assert time.monotonic() - began < 1.0, "the scrape waited for the count"
    assert first is not None and first != first  # NaN: nothing counted yet
    assert threading.current_thread().name not in store.counted_on
    behind()  # a scrape while the count runs starts no second one
    assert len(store.counted_on) <= 1
    store.go.set()
    deadline = time.monotonic() + WAIT_S
    while behind() != 1:
        assert time.monotonic() < deadline, "the kept count never followed"
        time.sleep(0.005)
    assert threading.current_thread().name not in store.counted_on


def test_a_resync_finding_a_refused_write_back_behind_leaves_it_to_its_backoff() -> None:
    """A registry that keeps refusing (no permission to write) is asked at the backoff's pace,
    not again at every resync (which hands the lane every model behind)."""
    tried: list[str] = []

    def refused(name: str) -> str:
        tried.append(name)
        return "the registry refused"

    lane = WriteBackLane(refused, busy=lambda name: False, backlog=lambda: False,
                         retry_initial_s=60, retry_max_s=60)

    async def go() -> None:
        run = asyncio.create_task(lane.run())
        lane.behind("m")
        await until(lambda: "m" in lane._retries, "the first attempt refused")
        lane.behind("m")
        await asyncio.sleep(0.1)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(go())
    assert tried == ["m"]


def test_what_was_decided_but_never_written_back_is_found_by_the_resync(store: Store) -> None:
    """A controller that stopped between a decision and its write-back (the lane's memory is
    gone): the next resync hands the model to the lane, from the store's marks alone."""
    registry = Listed(versions_={"1": ("models:/m-a", sig("prompt"))})
    Reconciler(store, registry, ENV).reconcile("m")  # decided, then the process died
    assert registry.writes == []
    worker = Worker(Reconciler(store, registry, ENV), store, registry, TableBroadcaster(),
                    Metrics.create(), resync_interval_s=3600, retry_initial_s=0.05,
                    retry_max_s=0.1)
    handed: list[str] = []
    worker.write_backs.behind = handed.append  # type: ignore[method-assign]

    async def go() -> None:
        await worker.resync.once(full=False)

    asyncio.run(go())
    assert handed == ["m"]
    assert worker.write_backs is not None
    assert Reconciler(store, registry, ENV).write_back("m") is None
    assert store.behind_write_back() == []
    assert registry.tags["1"]["sigserve.state"] == "live"


def test_a_mark_is_not_set_for_a_decision_written_since_the_write_back_read_it(
    store: Store,
) -> None:
    Reconciler(store, FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt"))}), ENV
               ).reconcile("m")
    record = store.load_model("m")
    assert record is not None and record.generation is not None
    assert not store.mark_written_back("m", record.generation - 1)
    assert store.behind_write_back() == ["m"]
    assert store.mark_written_back("m", record.generation)
    assert store.behind_write_back() == []


def test_a_persons_alias_move_not_judged_yet_is_left_for_its_pass(store: Store) -> None:
    """Written back after its decision, the lane may find the alias moved by a person since
    (the webhook's pass not run yet): it writes the tags but leaves the alias, which the pass
    takes as a pin or refuses."""
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt")),
                                       "2": ("models:/m-b", sig("prompt"))})
    reconciler = Reconciler(store, registry, ENV)
    reconciler.reconcile("m")
    assert reconciler.write_back("m") is None
    record = store.load_model("m")
    assert record is not None and record.default_version == "1"
    assert registry.aliases["serving"] == "1"
    registry.aliases["serving"] = "2"  # a person pins 2 in the MLflow UI
    registry.tags.clear()  # (and the lane has tags to write)
    assert reconciler.write_back("m") is None
    assert registry.aliases["serving"] == "2"  # not put back before its pass judged it
    assert registry.tags["2"]["sigserve.state"] == "live"
    reconciler.reconcile("m", "webhook:alias")  # the move's own pass: a pin
    record = store.load_model("m")
    assert record is not None and record.default_version == "2"


def test_a_takeover_fence_leaves_written_back_models_written_back(postgres_url: str) -> None:
    """A new leader moves every generation on (``Store.fence_in_flight``): the marks that were
    current move with them (no rewrite of the whole registry), and what was behind stays."""
    engine = make_engine(postgres_url)
    migrate(engine)
    store = Store(engine)
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt"))})
    for name in ("written", "behind"):
        Reconciler(store, registry, ENV).reconcile(name)
    assert Reconciler(store, registry, ENV).write_back("written") is None
    assert store.behind_write_back() == ["behind"]
    assert store.fence_in_flight() == 2
    assert store.behind_write_back() == ["behind"]


def test_a_verdict_tag_written_over_is_put_back_by_a_resync_pass_that_changed_nothing(
    store: Store,
) -> None:
    """Someone overwrote a verdict tag and its webhook was lost: the decision does not change,
    but the resync's pass sees the registry differ and hands the model to the lane."""
    registry = Listed(versions_={"1": ("models:/m-a", sig("prompt"))})
    first = Reconciler(store, registry, ENV)
    first.reconcile("m")
    assert first.write_back("m") is None and registry.tags["1"]["sigserve.state"] == "live"
    registry.tags["1"]["sigserve.state"] = "quarantined"
    worker = Worker(Reconciler(store, registry, ENV), store, registry, TableBroadcaster(),
                    Metrics.create(), resync_interval_s=3600, retry_initial_s=0.05,
                    retry_max_s=0.1)

    async def go() -> None:
        await worker.prime(already_published=True)
        run = asyncio.create_task(worker.run())
        await worker.resync.once(full=True)
        await until(lambda: registry.tags["1"]["sigserve.state"] == "live", "the tag put back")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(go())


class Signalled(Held):
    """Held, and says when a tag write is waiting."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)
        self.waiting = threading.Event()

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.waiting.set()
        super().set_version_tag(name, version, key, value)


def test_a_write_back_under_way_when_its_controller_steps_down_writes_nothing_more(
    store: Store,
) -> None:
    """Its first tag write was in flight at the step-down: the rest of its tags and its alias
    are the next leader's to write, never this one's from a record that may be stale."""
    registry = Signalled(versions_={"1": ("models:/m-a", sig("prompt"))})
    worker = Worker(Reconciler(store, registry, ENV), store, registry, TableBroadcaster(),
                    Metrics.create(), resync_interval_s=3600, retry_initial_s=0.05,
                    retry_max_s=0.1)
    registry.hold.clear()

    async def go() -> None:
        await worker.prime(already_published=True)
        run = asyncio.create_task(worker.run())
        worker.enqueue("m", "webhook:d-m")
        await until(registry.waiting.is_set, "a tag write under way")
        worker.reset()  # stepped down
        registry.hold.set()
        await until(lambda: not worker.write_backs._running, "the job ended")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(go())
    assert [w[0] for w in registry.writes] == ["tag"]
    assert store.behind_write_back() == ["m"]  # not marked: the next leader writes it


class AliasHeld(FakeRegistry):
    """A registry whose alias writes wait while ``hold`` is clear; ``waiting`` says one does."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.hold, self.waiting = threading.Event(), threading.Event()
        self.hold.set()

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.waiting.set()
        assert self.hold.wait(WAIT_S), "the test never let the write go"
        super().set_alias(name, alias, version)


def test_a_pin_made_while_a_write_back_writes_the_old_alias_stands(store: Store) -> None:
    """The write-back read the model before the pin and writes the alias to the old default:
    that alias is acknowledged as the controller's own, no pass follows it as a person's move,
    and the alias ends on the pinned version (seen on the real stack: the default went back)."""
    from controller import commands

    registry = AliasHeld(versions_={"1": ("models:/m-a", sig("prompt")),
                                    "2": ("models:/m-b", sig("prompt"))})  # fmt: skip
    worker = Worker(Reconciler(store, registry, ENV), store, registry, TableBroadcaster(),
                    Metrics.create(), resync_interval_s=3600, retry_initial_s=0.05,
                    retry_max_s=0.1)
    registry.hold.clear()

    async def go() -> str:
        await worker.prime(already_published=True)
        run = asyncio.create_task(worker.run())
        worker.enqueue("m", "webhook:d-m")
        await until(registry.waiting.is_set, "the first alias write under way")
        record = store.load_model("m")
        assert record is not None and record.default_version is not None
        other = "2" if record.default_version == "1" else "1"
        await asyncio.to_thread(commands.pin_default, store, "m", other, ENV)
        worker.enqueue("m", "admin")  # the admin API's publish_change
        registry.hold.set()
        await until(lambda: registry.aliases.get("serving") == other and
                    store.behind_write_back() == [] and not worker.write_backs._running,
                    "the alias on the pinned version")  # fmt: skip
        worker.enqueue("m", "webhook:d-again")  # a pass reading the registry as it is now
        await until(lambda: "m" not in worker._running and not len(worker.write_backs),
                    "the pass done")  # fmt: skip
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        return other

    pinned = asyncio.run(go())
    record = store.load_model("m")
    assert record is not None and record.default_version == pinned
    assert registry.aliases["serving"] == pinned


def test_the_write_back_gives_way_to_a_webhooks_name_not_to_a_resyncs(store: Store) -> None:
    """Names the resync enqueued (a full resync of a large registry is minutes of passes) do not
    hold the write-back; a webhook's name waiting does (for at most ``max_defer_s``, made longer
    than the test here)."""
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt"))})
    reconciler = Reconciler(store, registry, ENV)
    worker = Worker(reconciler, store, registry, TableBroadcaster(), Metrics.create(),
                    resync_interval_s=3600, retry_initial_s=0.05, retry_max_s=0.1)
    worker.write_backs._max_defer_s = 3 * WAIT_S

    async def go() -> None:
        await worker.prime(already_published=True)
        lane = asyncio.create_task(worker.write_backs.run())  # the lane alone: no passes run
        reconciler.reconcile("a")
        reconciler.reconcile("b")
        worker.enqueue("x")  # the resync's: waits in the queue, no pass takes it
        worker.write_backs.add("a")
        await until(lambda: store.behind_write_back() == ["b"], "a written back at once")
        worker.enqueue("y", "webhook:d-y")  # a decision waits
        worker.write_backs.add("b")
        await asyncio.sleep(0.3)
        assert store.behind_write_back() == ["b"]  # deferred to the decisions
        lane.cancel()
        await asyncio.gather(lane, return_exceptions=True)

    asyncio.run(go())


def test_a_write_back_of_many_versions_gives_way_to_its_models_next_pass(store: Store) -> None:
    """Three versions decided, nine tag writes to make, the first one held: a webhook for a
    fourth version is decided once that write ends, not after all ten writes (the storm's
    10-14 s to decided: the pass waited for its model's write-back in full); the rest of the
    writes follow the pass, each once, and the model ends written back."""
    registry = Signalled(versions_={str(n): ("models:/m-a", sig("prompt")) for n in (1, 2, 3)})
    broadcaster = TableBroadcaster()
    worker = Worker(Reconciler(store, registry, ENV), store, registry, broadcaster,
                    Metrics.create(), resync_interval_s=3600, retry_initial_s=0.05,
                    retry_max_s=0.1)  # fmt: skip

    def decided(version: str) -> bool:
        table = broadcaster.current
        model = table.models.get("m") if table is not None else None
        entry = model.versions.get(version) if model is not None else None
        return entry is not None and entry.state is VersionState.LIVE

    async def go() -> int:
        await worker.prime(already_published=True)
        run = asyncio.create_task(worker.run())
        registry.hold.clear()
        worker.enqueue("m", "webhook:d-1")
        await until(registry.waiting.is_set, "the first tag write under way")
        registry.versions_["4"] = ("models:/m-a", sig("prompt"))
        worker.enqueue("m", "webhook:d-4")
        await asyncio.sleep(0.05)
        registry.hold.set()
        await until(lambda: decided("4"), "v4 decided")
        writes_before = registry.tag_writes
        await until(lambda: store.behind_write_back() == [] and not worker.write_backs._running
                    and not len(worker.write_backs), "m written back")  # fmt: skip
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        return writes_before

    writes_before = asyncio.run(go())
    assert writes_before <= 2, f"v4's pass waited for {writes_before} tag writes"
    tags = [w for w in registry.writes if w[0] == "tag"]
    assert len(tags) == len(set(tags)) == 12  # three on each of the four versions, once
    record = store.load_model("m")
    assert record is not None
    assert [w for w in registry.writes if w[0] == "alias"][-1][2] == record.default_version

"""The resync loop on a fake registry (the seam) and a real store and reconciler.

The resync reconciles only what the registry's listing shows moved since each model's last
pass that ended well, what failed, and what the listing lacks; a full pass every
``full_interval_s`` and first at every start (docs/architecture.md, "What the resync sees").
Each listing the loop makes waits for the test's ``resync_pass``, so every pass is observed
whole; passes of the worker are the test's ``work`` (the reconciler, then ``passed``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.database import make_engine, migrate
from controller.exceptions import RegisteredModelGone
from controller.own_writes import OwnWrites, RememberingWriter
from controller.reconciler import Reconciler
from controller.registry import ObservedModel, ObservedVersion
from controller.registry_listing import LatestVersion, ModelFingerprint
from controller.resync import Resync
from controller.store import Store
from tests.unit.test_controller_reconciler import ENV

FULL_INTERVAL_S = 600.0


@dataclass
class Model:
    created_at: int = 1
    updated_at: int = 1
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    # The newest version's tags, as the listing shows them (no version is ever read here).
    latest: dict[str, str] | None = None


class Registry:
    """Registered models without versions; each listing waits for the test's step."""

    def __init__(self, names: list[str]) -> None:
        self.models = {n: Model() for n in names}
        self.reads: Counter[str] = Counter()  # the reconciler's reads, per model
        self.listings = 0
        self.answered = 0  # listings that returned
        self._go = threading.Semaphore(0)

    def step(self) -> None:
        self._go.release()

    def listing(self) -> dict[str, ModelFingerprint]:
        self.listings += 1
        assert self._go.acquire(timeout=30), "the test never let the listing go"
        self.answered += 1
        return {
            n: ModelFingerprint(m.created_at, m.updated_at, tuple(sorted(m.tags.items())),
                                tuple(sorted(m.aliases.items())),
                                () if m.latest is None else (LatestVersion(
                                    "1", "None", "READY", m.updated_at,
                                    tuple(sorted(m.latest.items()))),))
            for n, m in list(self.models.items())
        }  # fmt: skip

    def model_names(self) -> list[str]:
        return list(self.listing())

    def model(self, name: str) -> ObservedModel:
        self.reads[name] += 1
        m = self.models.get(name)
        if m is None:
            raise RegisteredModelGone(name)
        return ObservedModel(m.created_at, dict(m.aliases), dict(m.tags))

    def versions(self, name: str) -> list[ObservedVersion]:
        return []

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        raise AssertionError("no versions, no verdict tags")

    def set_alias(self, name: str, alias: str, version: str) -> None:
        raise AssertionError("no versions, no alias")

    def artifact(self, name: str, version: str) -> Any:
        raise AssertionError("no versions, no artifacts")


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.005)


class Loop:
    """``Resync.run`` with a recording queue, one observed pass at a time."""

    def __init__(self, tmp_path: Path, names: list[str], **kw: Any) -> None:
        engine = make_engine(f"sqlite:///{tmp_path}/c.db")
        migrate(engine)
        self.store = Store(engine)
        self.registry = Registry(names)
        self.reconciler = Reconciler(self.store, self.registry, ENV)  # type: ignore[arg-type]
        self.enqueued: list[str] = []
        self.resync = Resync(self.registry, self.store,  # type: ignore[arg-type]
                             lambda name, actor: self.enqueued.append(name), interval_s=0,
                             audit_retention=timedelta(days=90), full_interval_s=FULL_INTERVAL_S,
                             **kw)  # fmt: skip
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        calls = self.registry.listings
        self._task = asyncio.create_task(self.resync.run())
        await until(lambda: self.registry.listings == calls + 1)

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        self.registry.step()  # the listing in its thread returns, into a cancelled task
        await until(lambda: self.registry.answered == self.registry.listings)

    async def resync_pass(self) -> list[str]:
        """Let one listing go; what that pass enqueued, once it ended (the next one began)."""
        mark, calls = len(self.enqueued), self.registry.listings
        self.registry.step()
        await until(lambda: self.registry.listings == calls + 1)
        return self.enqueued[mark:]

    def work(self, names: list[str]) -> None:
        """The worker: a pass over each name, then ``passed`` (it committed)."""
        for name in names:
            self.reconciler.reconcile(name)
            self.resync.passed(name)


def test_a_resync_with_nothing_changed_enqueues_nothing_and_reads_nothing(tmp_path: Path) -> None:
    loop = Loop(tmp_path, ["a", "b", "c"])

    async def go() -> None:
        await loop.start()
        first = await loop.resync_pass()
        assert first == ["a", "b", "c"]  # the first pass after start is full
        loop.work(first)
        reads = dict(loop.registry.reads)
        for _ in range(3):
            assert await loop.resync_pass() == []
        assert loop.registry.reads == reads  # no MLflow read beyond the listing
        await loop.stop()

    asyncio.run(go())


def test_a_moved_fingerprint_enqueues_that_model_only(tmp_path: Path) -> None:
    loop = Loop(tmp_path, ["a", "b", "c"])
    models = loop.registry.models

    async def go() -> None:
        await loop.start()
        loop.work(await loop.resync_pass())
        models["a"].tags["sigserve.policy"] = "exact"  # a model tag: no updated_at move
        assert await loop.resync_pass() == ["a"]
        loop.work(["a"])
        models["b"].aliases["serving"] = "1"
        models["c"].updated_at = 2  # a version created or deleted
        assert await loop.resync_pass() == ["b", "c"]
        loop.work(["b", "c"])
        assert await loop.resync_pass() == []
        await loop.stop()

    asyncio.run(go())


class Writer:
    """The write-back's writes landing in the fake registry."""

    def __init__(self, registry: Registry) -> None:
        self.models = registry.models

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        assert version == "1"
        latest = self.models[name].latest
        assert latest is not None
        latest[key] = value

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.models[name].aliases[alias] = version


def test_a_fingerprint_moved_by_the_controllers_own_writes_alone_enqueues_nothing(
    tmp_path: Path,
) -> None:
    """The write-back's verdict tags and alias show in the listing (issue 20: at 10,000 models
    each model written back was reconciled once more, for nothing); anything more than them,
    or other than them, is a change."""
    memory = OwnWrites()
    loop = Loop(tmp_path, ["a", "b", "c"], own_writes=memory.take_made)
    models = loop.registry.models
    for m in models.values():
        m.latest = {}
    ours = RememberingWriter(Writer(loop.registry), memory)

    async def go() -> None:
        await loop.start()
        loop.work(await loop.resync_pass())
        ours.set_version_tag("a", "1", "sigserve.state", "live")
        ours.set_alias("a", "serving", "1")
        ours.set_version_tag("b", "1", "sigserve.state", "live")
        ours.set_version_tag("c", "1", "sigserve.state", "live")
        models["b"].tags["team"] = "x"  # a person's, beside the controller's
        models["c"].latest["sigserve.state"] = "refused"  # written over by a person since
        assert await loop.resync_pass() == ["b", "c"]
        loop.work(["b", "c"])
        assert await loop.resync_pass() == []
        # Written, but not shown by the listing that takes it: it landed after the listing
        # read the model, or a person undid it before (their webhook lost), which only a pass
        # tells apart. The listing after, which shows it, is a move no write taken with it
        # explains: such a write costs two passes, never a missed move.
        memory.made(("model_version_alias.created", "a", "serving", "2"))
        assert await loop.resync_pass() == ["a"]
        loop.work(["a"])
        models["a"].aliases["serving"] = "2"
        assert await loop.resync_pass() == ["a"]
        loop.work(["a"])
        # The writes were taken: the same move again is a person's.
        ours.set_alias("a", "serving", "1")
        assert await loop.resync_pass() == []
        models["a"].aliases["serving"] = "2"
        assert await loop.resync_pass() == ["a"]
        await loop.stop()

    asyncio.run(go())


def test_a_write_kept_past_a_listing_never_excuses_a_persons_later_move(tmp_path: Path) -> None:
    """The controller writes serving=2, a person puts it back to 1 before the next listing, whose
    webhook is lost: that listing equals the one recorded, but it does not show the write it
    takes, so it enqueues the model (else serving kept 2 while MLflow said 1 until the full
    resync, up to 600 s). Then the person moves it to 2, the webhook lost again: the resync
    after must enqueue the model, not take the move for the controller's old write."""
    memory = OwnWrites()
    loop = Loop(tmp_path, ["a"], own_writes=memory.take_made)
    model = loop.registry.models["a"]
    model.latest = {}
    model.aliases["serving"] = "1"
    ours = RememberingWriter(Writer(loop.registry), memory)

    async def go() -> None:
        await loop.start()
        loop.work(await loop.resync_pass())
        assert await loop.resync_pass() == []
        ours.set_alias("a", "serving", "2")
        model.aliases["serving"] = "1"  # a person, before the next listing
        assert await loop.resync_pass() == ["a"]
        loop.work(["a"])
        assert await loop.resync_pass() == []
        model.aliases["serving"] = "2"  # the same person, later; the webhook is lost
        assert await loop.resync_pass() == ["a"]
        await loop.stop()

    asyncio.run(go())


def test_a_failed_pass_is_enqueued_at_the_next_resync_whatever_the_listing_says(
    tmp_path: Path,
) -> None:
    loop = Loop(tmp_path, ["a", "b"])

    async def go() -> None:
        await loop.start()
        loop.work(await loop.resync_pass())
        loop.resync.failed("a")  # say, a version's artifact could not be read for now
        assert await loop.resync_pass() == ["a"]
        assert await loop.resync_pass() == ["a"]  # until a pass over it ends well
        loop.work(["a"])
        assert await loop.resync_pass() == []
        await loop.stop()

    asyncio.run(go())


def test_a_pass_records_what_the_listing_showed_never_what_came_after(tmp_path: Path) -> None:
    """Listed, enqueued, then changed before its pass read it: the pass read the newer state,
    but only the listed one is recorded, so the next resync enqueues it once more (safe)."""
    loop = Loop(tmp_path, ["a", "b"])
    models = loop.registry.models

    async def go() -> None:
        await loop.start()
        loop.work(await loop.resync_pass())
        models["a"].aliases["serving"] = "1"
        assert await loop.resync_pass() == ["a"]
        models["a"].aliases["serving"] = "2"  # after the listing, before the pass
        loop.work(["a"])
        assert await loop.resync_pass() == ["a"]
        loop.work(["a"])
        assert await loop.resync_pass() == []
        await loop.stop()

    asyncio.run(go())


def test_a_model_gone_from_the_registry_is_enqueued_once_and_its_tombstone_not_again(
    tmp_path: Path,
) -> None:
    loop = Loop(tmp_path, ["a", "b"])
    models = loop.registry.models

    async def go() -> None:
        await loop.start()
        loop.work(await loop.resync_pass())
        del models["b"]  # deleted from the registry: no webhook says so
        assert await loop.resync_pass() == ["b"]
        loop.work(["b"])
        assert loop.store.stored_names() == {"a": False, "b": True}  # a tombstone now
        reads = loop.registry.reads["b"]
        for _ in range(3):
            assert await loop.resync_pass() == []
        assert loop.registry.reads["b"] == reads  # the tombstone is not read again
        models["b"] = Model(created_at=2)  # registered again under its name
        assert await loop.resync_pass() == ["b"]
        loop.work(["b"])
        assert loop.store.stored_names() == {"a": False, "b": False}
        assert await loop.resync_pass() == []
        await loop.stop()

    asyncio.run(go())


def test_a_stored_model_the_listing_lacks_is_enqueued_until_its_pass_ends(tmp_path: Path) -> None:
    loop = Loop(tmp_path, ["a", "b"])

    async def go() -> None:
        await loop.start()
        loop.work(await loop.resync_pass())
        del loop.registry.models["b"]
        assert await loop.resync_pass() == ["b"]
        loop.resync.failed("b")  # the pass failed: nothing written, still stored as it was
        assert await loop.resync_pass() == ["b"]
        await loop.stop()

    asyncio.run(go())


def test_the_full_pass_enqueues_every_model_and_tombstone_every_full_interval(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    loop = Loop(tmp_path, ["a", "b", "c"], clock=lambda: now[0])

    async def go() -> None:
        await loop.start()
        loop.work(await loop.resync_pass())
        del loop.registry.models["c"]
        loop.work(await loop.resync_pass())  # c is a tombstone now
        now[0] += FULL_INTERVAL_S - 1
        assert await loop.resync_pass() == []
        now[0] += 1
        # What the listing cannot show (a version tag whose webhook was lost) is read here.
        assert await loop.resync_pass() == ["a", "b", "c"]
        loop.work(["a", "b", "c"])
        assert await loop.resync_pass() == []
        await loop.stop()
        # A loop started again (the controller took the lead again) begins with a full pass.
        await loop.start()
        assert await loop.resync_pass() == ["a", "b", "c"]
        await loop.stop()

    asyncio.run(go())


def test_a_full_pass_that_failed_is_the_next_pass(tmp_path: Path) -> None:
    from sqlalchemy.exc import OperationalError

    now = [1000.0]
    loop = Loop(tmp_path, ["a", "b"], clock=lambda: now[0])
    stored_names = loop.store.stored_names
    down = [True]

    def locked() -> dict[str, bool]:
        if down.pop() if down else False:
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        return stored_names()

    async def go() -> None:
        await loop.start()
        loop.work(await loop.resync_pass())
        now[0] += FULL_INTERVAL_S
        loop.store.stored_names = locked  # type: ignore[method-assign]
        assert await loop.resync_pass() == []  # the full pass due failed after its listing
        assert await loop.resync_pass() == ["a", "b"]
        await loop.stop()

    asyncio.run(go())


def test_priming_gets_every_listed_name_whatever_the_resync_saw_before(tmp_path: Path) -> None:
    """A fresh database's first table waits for every listed model (``Worker.prime``), even
    when the resync's memory says nothing changed (a leader that led before, priming again)."""
    loop = Loop(tmp_path, ["a", "b", "c"])

    async def go() -> None:
        await loop.start()
        loop.work(await loop.resync_pass())
        assert await loop.resync_pass() == []
        await loop.stop()
        loop.registry.step()  # for the listing of ``once`` below
        assert await loop.resync.once() == ["a", "b", "c"]

    asyncio.run(go())


MODELS = 10_000


class Listed:
    """A registry of ``MODELS`` models whose listing is built once (the controller's side only:
    MLflow's own answer and the client's parse of it are measured apart, below)."""

    def __init__(self) -> None:
        self.prints = {
            f"model-{i:05d}": ModelFingerprint(
                1_700_000_000_000 + i, 1_700_000_000_000 + i,
                (("sigserve.policy", "backward"), ("team", "t")), (("serving", "3"),),
                (LatestVersion("3", "None", "READY", 1_700_000_000_000 + i,
                               (("sigserve.reasons", "ok"), ("sigserve.state", "live"))),),
            )
            for i in range(MODELS)
        }  # fmt: skip

    def listing(self) -> dict[str, ModelFingerprint]:
        return dict(self.prints)

    def model_names(self) -> list[str]:
        return list(self.prints)


def _stored(tmp_path: Path, names: list[str]) -> Store:
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from controller.schema import RegisteredModelRow

    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(insert(RegisteredModelRow), [
            {"name": n, "policy": "backward", "created_at": now, "updated_at": now}
            for n in names
        ])  # fmt: skip
    return Store(engine)


@pytest.mark.load
def test_what_a_resync_of_10000_unchanged_models_costs_the_controller(tmp_path: Path) -> None:
    """Time and CPU of one resync with nothing changed: the comparison, the stored names and
    the pruning (its listing's parse is measured below). Printed for docs/benchmarks.md."""
    registry = Listed()
    store = _stored(tmp_path, sorted(registry.prints))
    enqueued: list[str] = []
    resync = Resync(registry, store, lambda n, a: enqueued.append(n),  # type: ignore[arg-type]
                    interval_s=30, audit_retention=timedelta(days=90))  # fmt: skip

    async def go() -> None:
        assert len(await resync.once()) == MODELS  # type: ignore[arg-type]
        for name in enqueued:
            resync.passed(name)
        walls, cpus = [], []
        for _ in range(20):
            wall, cpu = time.perf_counter(), time.process_time()
            assert await resync.once(full=False) == []
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        walls.sort()
        cpus.sort()
        print(f"\nresync of {MODELS} unchanged models: wall p50 {walls[10] * 1000:.1f} ms, "
              f"max {walls[-1] * 1000:.1f} ms; CPU p50 {cpus[10] * 1000:.1f} ms "
              f"({cpus[10] / 30 * 100:.2f}% of a core at a 30 s interval)")
        assert walls[10] < 1.0

    asyncio.run(go())


@pytest.mark.load
def test_what_parsing_a_listing_of_10000_models_costs_the_controller() -> None:
    """The client's side of the listing: ten REST pages of 1,000 models as MLflow 3.17 answers
    them (JSON), parsed as its client parses them, and fingerprinted."""
    from google.protobuf.json_format import MessageToJson, Parse
    from mlflow.entities.model_registry import (
        ModelVersion,
        ModelVersionTag,
        RegisteredModel,
        RegisteredModelAlias,
        RegisteredModelTag,
    )
    from mlflow.protos.model_registry_pb2 import SearchRegisteredModels

    from controller.registry_listing import fingerprint

    pages = []
    for p in range(MODELS // 1000):
        response = SearchRegisteredModels.Response()
        for i in range(p * 1000, (p + 1) * 1000):
            t = 1_700_000_000_000 + i
            latest = ModelVersion(f"model-{i:05d}", "3", t, t, current_stage="None",
                                  source=f"models:/m-{i:032x}", status="READY",
                                  tags=[ModelVersionTag("sigserve.state", "live"),
                                        ModelVersionTag("sigserve.reasons", "ok")])
            model = RegisteredModel(f"model-{i:05d}", t, t, latest_versions=[latest],
                                    tags=[RegisteredModelTag("team", "t")],
                                    aliases=[RegisteredModelAlias("serving", "3")])
            response.registered_models.append(model.to_proto())
        pages.append(MessageToJson(response))
    print(f"\na page of 1,000 models: {len(pages[0]) / 1e6:.2f} MB of JSON")
    wall, cpu = time.perf_counter(), time.process_time()
    prints = {}
    for page in pages:
        parsed = Parse(page, SearchRegisteredModels.Response())
        for proto in parsed.registered_models:
            model = RegisteredModel.from_proto(proto)
            prints[model.name] = fingerprint(model)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert len(prints) == MODELS
    print(f"parsing and fingerprinting {MODELS} listed models: wall {wall * 1000:.0f} ms, "
          f"CPU {cpu * 1000:.0f} ms ({cpu / 30 * 100:.2f}% of a core at a 30 s interval)")

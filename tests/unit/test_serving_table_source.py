"""An ingress replica's routing table: long-poll, only newer revisions, a store for restarts."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import httpx
import pytest

from serving import table_poll_failures
from serving.exceptions import UnknownModel, UnknownVersion, VersionQuarantined
from serving.resolve import resolve
from serving.signed_table import read_stored
from serving.table_source import SchemaMismatch, TableSource, decode
from wire.routing_table import (
    SCHEMA_VERSION,
    ModelEntry,
    RoutingTable,
    VersionEntry,
    VersionState,
)


class MemoryStore:
    def __init__(self, raw: str | None = None) -> None:
        self.raw = raw
        self.writes = 0

    def read(self) -> str | None:
        return self.raw

    def write(self, table_json: str) -> None:
        self.raw = table_json
        self.writes += 1


class StandInController:
    """Answers GET /routing-table like the controller: newer table at once, else 204 later."""

    def __init__(self, table: RoutingTable | None) -> None:
        self.table = table
        self.afters: list[int] = []
        self.down = False
        self.refused = 0  # polls answered with a connection error while down

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            self.refused += 1
            raise httpx.ConnectError("controller down", request=request)
        assert request.url.path == "/routing-table"
        after = int(request.url.params["after"])
        self.afters.append(after)
        if self.table is not None and self.table.revision > after:
            return httpx.Response(200, content=self.table.model_dump_json())
        await asyncio.sleep(0.01)
        return httpx.Response(204)


def table(revision: int, *names: str) -> RoutingTable:
    return RoutingTable(
        revision=revision,
        models={n: ModelEntry(name=n, default_version=None) for n in names},
    )


async def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``predicate`` until it holds; fail past ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {timeout}s")
        await asyncio.sleep(0.01)


def test_polls_from_the_held_revision_and_stores_what_it_takes() -> None:
    async def scenario() -> None:
        controller = StandInController(table(1, "a"))
        store = MemoryStore()
        source = TableSource(
            "http://controller/", store=store, transport=httpx.MockTransport(controller)
        )
        await source.start(wait_s=2)
        assert source.table is not None and source.table.revision == 1
        controller.table = table(2, "a", "b")
        await wait_for(lambda: source.table is not None and source.table.revision == 2)
        await wait_for(lambda: store.writes == 2)
        await source.stop()
        assert controller.afters[0] == -1
        assert 1 in controller.afters
        assert read_stored(store.raw or "", None).table.revision == 2

    asyncio.run(scenario())


def test_a_replica_started_while_the_controller_is_down_serves_the_stored_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(table_poll_failures, "BACKOFF_FIRST_S", 0.02)

    async def scenario() -> None:
        controller = StandInController(None)
        controller.down = True
        source = TableSource(
            "http://controller",
            store=MemoryStore(table(7, "kept").model_dump_json()),
            transport=httpx.MockTransport(controller),
        )
        await source.start()
        assert source.table is not None and set(source.table.models) == {"kept"}
        # The failing poll backs off and keeps going; it never takes the table away.
        await wait_for(lambda: controller.refused >= 3)
        assert source.table.revision == 7
        controller.down = False
        controller.table = table(8, "kept", "new")
        await wait_for(lambda: source.table is not None and source.table.revision == 8, 5)
        await source.stop()

    asyncio.run(scenario())


def test_only_a_higher_revision_replaces_the_held_table() -> None:
    source = TableSource("http://controller")
    assert source.offer(table(3, "a"))
    assert not source.offer(table(3, "b"))
    assert not source.offer(table(2, "c"))
    assert source.table is not None and set(source.table.models) == {"a"}
    assert not source.offer(RoutingTable(schema_version=99, revision=10))


class RacedStore(MemoryStore):
    """Empty when this replica starts; another replica writes a newer table right after."""

    def __init__(self, newer: RoutingTable) -> None:
        super().__init__()
        self.newer = newer
        self.reads = 0

    def read(self) -> str | None:
        self.reads += 1
        return None if self.reads == 1 else self.newer.model_dump_json()


def test_the_store_never_goes_back_to_an_older_revision() -> None:
    async def scenario() -> None:
        store = RacedStore(table(9, "newer"))
        controller = StandInController(table(5, "older"))
        source = TableSource(
            "http://controller", store=store, transport=httpx.MockTransport(controller)
        )
        await source.start(wait_s=2)
        await wait_for(lambda: store.reads >= 2)
        await source.stop()
        assert source.table is not None and source.table.revision == 5
        assert store.writes == 0

    asyncio.run(scenario())


def test_a_table_from_another_epoch_wins_whatever_its_revision() -> None:
    from wire.routing_table import RoutingTable, supersedes

    held = RoutingTable(revision=57, epoch="old")
    assert supersedes(RoutingTable(revision=1, epoch="new"), held)
    assert not supersedes(RoutingTable(revision=57, epoch="old"), held)
    assert not supersedes(RoutingTable(revision=3, epoch="old"), held)
    assert supersedes(RoutingTable(revision=58, epoch="old"), held)


class OtherSchemaController:
    """A controller of another release: answers at once, with a table of another schema.

    Once it holds a ``table`` of this schema, it answers like ``StandInController``.
    """

    def __init__(self, schema_version: int) -> None:
        # Not a valid table of this schema at all (a revision that is not a number), so only a
        # check made before validation can tell the replica what is wrong.
        self.body = {"schema_version": schema_version, "revision": "r9", "models": []}
        self.requests = 0
        self.table: RoutingTable | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.table is None:
            # Yield like a real connection would: a replica that polls again at once then shows
            # as hundreds of requests, not as a hung event loop.
            await asyncio.sleep(0)
            return httpx.Response(200, json=self.body)
        if self.table.revision > int(request.url.params["after"]):
            return httpx.Response(200, content=self.table.model_dump_json())
        await asyncio.sleep(0.01)
        return httpx.Response(204)


def test_a_table_of_another_schema_backs_off_instead_of_spinning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(table_poll_failures, "BACKOFF_FIRST_S", 0.05)
    monkeypatch.setattr(table_poll_failures, "BACKOFF_MAX_S", 0.2)
    caplog.set_level(logging.DEBUG, logger="serving.table_source")

    async def scenario() -> float:
        controller = OtherSchemaController(SCHEMA_VERSION + 1)
        source = TableSource("http://controller", transport=httpx.MockTransport(controller))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await source.start()
        await wait_for(lambda: controller.requests >= 5)
        took = loop.time() - started
        assert source.table is None
        controller.table = table(1, "a")
        await wait_for(lambda: source.table is not None)
        await source.stop()
        return took

    took = asyncio.run(scenario())
    # Five polls are four waits apart: 50, 100, 200 and 200 ms at least (each plus up to 25 ms
    # of jitter), where answering at once without a backoff makes five polls in milliseconds.
    assert took >= 0.05 + 0.1 + 0.2 + 0.2, took
    warnings = [r for r in caplog.records
                if r.levelno >= logging.WARNING and "poll failed" in r.getMessage()]
    assert len(warnings) == 1
    assert f"schema_version {SCHEMA_VERSION + 1}" in warnings[0].getMessage()
    assert any("answered again" in r.getMessage() for r in caplog.records)


def test_the_schema_is_checked_before_the_table_is_validated() -> None:
    with pytest.raises(SchemaMismatch, match=f"schema_version {SCHEMA_VERSION + 1}"):
        decode(json.dumps({"schema_version": SCHEMA_VERSION + 1, "revision": "r9"}))
    with pytest.raises(SchemaMismatch, match="schema_version None"):
        decode(json.dumps({"revision": 1}))
    assert decode(table(2, "a").model_dump_json()).revision == 2


def older_schema(revision: int, *names: str) -> str:
    """A table of a schema no replica of this release reads (schema 2 it reads:
    test_routing_table_schema.py)."""
    document = json.loads(table(revision, *names).model_dump_json())
    document["schema_version"] = 1
    return json.dumps(document)


def test_a_stored_table_of_another_schema_is_ignored_and_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> MemoryStore:
        # A higher revision than the controller's, so only its schema keeps it from winning.
        store = MemoryStore(older_schema(50, "stale"))
        controller = StandInController(table(3, "fresh"))
        source = TableSource(
            "http://controller", store=store, transport=httpx.MockTransport(controller)
        )
        await source.start(wait_s=2)
        assert source.table is not None and set(source.table.models) == {"fresh"}
        await wait_for(lambda: store.writes == 1)
        await source.stop()
        return store

    store = asyncio.run(scenario())
    assert read_stored(store.raw or "", None).table.revision == 3
    assert any("ignoring the stored routing table" in r.getMessage() for r in caplog.records)


# A replica warms the versions a table makes defaults before it answers for them
# (``prepare``). Decisions must not wait behind that: see docs/architecture.md ("No cold start").

LIVE, QUARANTINED = VersionState.LIVE, VersionState.QUARANTINED


def model(
    name: str, default: str, *, quarantined: tuple[str, ...] = (), versions: str = "123"
) -> ModelEntry:
    """Live versions ``versions`` (each bound to its artifact) but ``quarantined``."""

    def entry(v: str) -> VersionEntry:
        if v in quarantined:
            return VersionEntry(version=v, state=QUARANTINED, reasons=[f"{v} is broken"])
        source = f"models:/{name}-{v}"
        return VersionEntry(version=v, state=LIVE, source=source, mlmodel_digest=v * 64)

    return ModelEntry(name=name, default_version=default, versions={v: entry(v) for v in versions})


def pinned(
    revision: int,
    default: str,
    *,
    quarantined: tuple[str, ...] = (),
    versions: str = "123",
    also: tuple[ModelEntry, ...] = (),
) -> RoutingTable:
    """Model "a" with ``default`` pinned (and the models ``also``)."""
    a = model("a", default, quarantined=quarantined, versions=versions)
    return RoutingTable(revision=revision, models={m.name: m for m in (a, *also)})


class StuckLoads:
    """A replica's warm-up whose loads of the versions ``stuck`` hang until released.

    Stands for models that take minutes to load; it loads what a table makes defaults, as the
    replica's does, and two warm-ups of one version both wait for it, as the replica's share a
    load.
    """

    def __init__(self, *stuck: str) -> None:
        self.release = {version: asyncio.Event() for version in stuck}
        self.entered = {version: asyncio.Event() for version in stuck}

    async def __call__(self, new: RoutingTable, held: RoutingTable | None) -> None:
        for name, entry in new.models.items():
            before = held.models.get(name) if held is not None else None
            version = entry.default_version
            if before is not None and before.default_version == version:
                continue
            if version in self.release:
                self.entered[version].set()
                await self.release[version].wait()

    def release_all(self) -> None:
        for event in self.release.values():
            event.set()


def answering(source: TableSource, version: str | None = None, name: str = "a") -> str:
    """The version a request for ``name`` (its default when ``version`` is None) runs."""
    return resolve(source.table, name, version).version.version


async def started(controller: StandInController, warm_up: StuckLoads) -> TableSource:
    source = TableSource(
        "http://controller", transport=httpx.MockTransport(controller), prepare=warm_up
    )
    await source.start(wait_s=2)
    assert source.table is not None and answering(source) == "1"
    return source


def test_a_quarantine_applies_while_a_new_default_is_still_warming() -> None:
    async def scenario() -> None:
        controller = StandInController(pinned(1, "1"))
        warm_up = StuckLoads("2")
        source = await started(controller, warm_up)
        controller.table = pinned(2, "2")  # a pin: version 2 must load before it is the default
        await asyncio.wait_for(warm_up.entered["2"].wait(), 2)
        controller.table = pinned(3, "2", quarantined=("3",))
        # The quarantine is answered at once, though version 2 is still loading...
        await wait_for(lambda: source.table is not None and source.table.revision == 3)
        with pytest.raises(VersionQuarantined, match="3 is broken"):
            answering(source, "3")
        # ...and the old default keeps answering for the default meanwhile.
        assert answering(source) == "1" and answering(source, "2") == "2"
        warm_up.release_all()
        await wait_for(lambda: answering(source) == "2")
        assert source.table is not None and source.table.revision == 3
        await source.stop()

    asyncio.run(scenario())


def test_an_old_default_quarantined_during_the_warm_up_is_not_kept() -> None:
    async def scenario() -> None:
        controller = StandInController(pinned(1, "1"))
        warm_up = StuckLoads("2")
        source = await started(controller, warm_up)
        controller.table = pinned(2, "2")
        await asyncio.wait_for(warm_up.entered["2"].wait(), 2)
        # Version 1 quarantined: the default goes to version 2 at once, loaded or not.
        controller.table = pinned(3, "2", quarantined=("1",))
        await wait_for(lambda: source.table is not None and source.table.revision == 3)
        assert answering(source) == "2"
        with pytest.raises(VersionQuarantined):
            answering(source, "1")
        warm_up.release_all()
        await source.stop()

    asyncio.run(scenario())


def test_a_default_removed_during_the_warm_up_is_not_kept() -> None:
    async def scenario() -> None:
        controller = StandInController(pinned(1, "1"))
        warm_up = StuckLoads("2")
        source = await started(controller, warm_up)
        controller.table = pinned(2, "2")
        await asyncio.wait_for(warm_up.entered["2"].wait(), 2)
        controller.table = pinned(3, "2", versions="23")  # version 1 deleted in the registry
        await wait_for(lambda: source.table is not None and source.table.revision == 3)
        assert answering(source) == "2"
        with pytest.raises(UnknownVersion):
            answering(source, "1")
        warm_up.release_all()
        await source.stop()

    asyncio.run(scenario())


def test_a_warmed_default_is_answered_though_newer_tables_are_still_warming() -> None:
    """Tables that arrive faster than loads end (a registration storm) do not hold a default
    back for good: each default switches once its own warm-up is over."""

    async def scenario() -> None:
        controller = StandInController(pinned(1, "1", also=(model("b", "1"),)))
        warm_up = StuckLoads("2", "3")
        source = await started(controller, warm_up)
        controller.table = pinned(2, "2", also=(model("b", "1"),))
        await asyncio.wait_for(warm_up.entered["2"].wait(), 2)
        controller.table = pinned(3, "2", also=(model("b", "3"),))
        await wait_for(lambda: source.table is not None and source.table.revision == 3)
        assert (answering(source), answering(source, name="b")) == ("1", "1")
        warm_up.release["2"].set()
        await wait_for(lambda: answering(source) == "2")
        # b's new default is still loading: b keeps its old one.
        assert answering(source, name="b") == "1"
        warm_up.release["3"].set()
        await wait_for(lambda: answering(source, name="b") == "3")
        await source.stop()

    asyncio.run(scenario())


def test_the_first_table_is_answered_only_once_its_defaults_are_warm() -> None:
    async def scenario() -> None:
        controller = StandInController(pinned(1, "1"))
        warm_up = StuckLoads("1")
        source = TableSource(
            "http://controller", transport=httpx.MockTransport(controller), prepare=warm_up
        )
        await source.start()
        await asyncio.wait_for(warm_up.entered["1"].wait(), 2)
        # A replica with nothing warm yet answers 503 (not ready) rather than load on a request.
        assert source.table is None
        warm_up.release_all()
        await wait_for(lambda: source.table is not None and answering(source) == "1")
        # It asked for newer tables meanwhile, never for the one it was warming again.
        assert set(controller.afters) <= {-1, 1} and controller.afters.count(-1) == 1
        await source.stop()

    asyncio.run(scenario())


def test_a_new_model_is_unknown_until_its_default_is_warm_and_others_do_not_wait() -> None:
    async def scenario() -> None:
        controller = StandInController(pinned(1, "1"))
        warm_up = StuckLoads("2")
        source = await started(controller, warm_up)
        # Model b arrives with version 2 as its default, and a's version 3 is quarantined.
        controller.table = pinned(2, "1", quarantined=("3",), also=(model("b", "2"),))
        await asyncio.wait_for(warm_up.entered["2"].wait(), 2)
        await wait_for(lambda: source.table is not None and source.table.revision == 2)
        with pytest.raises(VersionQuarantined):
            answering(source, "3")
        with pytest.raises(UnknownModel):
            answering(source, name="b")
        warm_up.release_all()
        await wait_for(lambda: source.table is not None and "b" in source.table.models)
        assert answering(source, name="b") == "2"
        await source.stop()

    asyncio.run(scenario())


class BusyController(StandInController):
    """A controller holding as many polls as it allows: 503 + Retry-After for ``busy`` polls."""

    def __init__(self, table: RoutingTable, busy: int, retry_after: str, full: bool) -> None:
        super().__init__(table)
        self.busy = busy
        self.retry_after = retry_after
        self.full = full  # the controller's own answer, else a proxy's bare 503
        self.at: list[float] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.at.append(asyncio.get_running_loop().time())
        if self.busy:
            self.busy -= 1
            if not self.full:
                return httpx.Response(503, headers={"retry-after": self.retry_after},
                                      text="Service Unavailable")
            return httpx.Response(
                503, headers={"retry-after": self.retry_after,
                              "content-type": "application/problem+json"},
                json={"type": "urn:sigserve:problem:too-many-polls", "status": 503},
            )
        return await super().__call__(request)


@pytest.mark.parametrize(
    ("full", "says"),
    [(True, "holds as many routing-table polls"), (False, "the controller is unavailable")],
    ids=["polls-full", "proxy-503"],
)
def test_a_busy_controller_is_asked_again_after_its_retry_after(
    full: bool, says: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The replica's own backoff alone would ask again within ~15 ms.
    monkeypatch.setattr(table_poll_failures, "BACKOFF_FIRST_S", 0.01)
    caplog.set_level(logging.DEBUG, logger="serving.table_source")

    async def scenario() -> BusyController:
        controller = BusyController(table(1, "a"), busy=2, retry_after="0.3", full=full)
        source = TableSource("http://controller", transport=httpx.MockTransport(controller))
        await source.start()
        await wait_for(lambda: source.table is not None, 5)
        await source.stop()
        return controller

    controller = asyncio.run(scenario())
    gaps = [b - a for a, b in zip(controller.at, controller.at[1:], strict=False)][:2]
    assert all(gap >= 0.3 for gap in gaps), gaps
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and "poll failed" in r.getMessage()]
    assert len(warnings) == 1 and says in warnings[0]

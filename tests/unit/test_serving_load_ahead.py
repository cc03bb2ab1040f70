"""A load that has not produced a model never costs a loaded one: models are loaded ahead of an
LRU that evicts the way Ray Serve's multiplexer does (before it calls its loader), with real
pyfunc artifacts saved on disk and the real ``PyfuncLoader``."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from pathlib import Path

import pytest

from serving.exceptions import ModelUnavailable
from serving.load_ahead import LoadAhead
from serving.loader import LoadedModel, PyfuncLoader
from serving.model_ids import Artifact, model_id
from tests.unit.test_serving_loader import broken_pickle, saved


class RayOrderLru:
    """Ray Serve 2.60's ``_ModelMultiplexWrapper.load_model`` in its order: a hit moves to the
    end; a miss takes the lock, evicts the least recently used model if full (calling its
    ``__del__``), *then* calls the loader."""

    def __init__(
        self, load: object, max_models: int, del_gate: threading.Event | None = None
    ) -> None:
        self.load = load
        self.max_models = max_models
        self.models: OrderedDict[str, LoadedModel] = OrderedDict()
        self.lock = asyncio.Lock()
        self.evictions: list[str] = []
        self.calls = 0
        # Set: a model's ``__del__`` runs as Ray runs a plain function's, in a worker thread
        # (awaited under the lock), once the gate opens.
        self.del_gate = del_gate

    async def __call__(self, value: str) -> LoadedModel:
        self.calls += 1
        if value in self.models:
            self.models.move_to_end(value)
            return self.models[value]
        async with self.lock:
            if value in self.models:
                return self.models[value]
            if len(self.models) >= self.max_models:
                evicted, model = self.models.popitem(last=False)
                self.evictions.append(evicted)
                gate = self.del_gate
                if gate is None:
                    model.__dict__["__del__"]()
                else:

                    def delete(model: LoadedModel = model, gate: threading.Event = gate) -> None:
                        gate.wait(30)
                        model.__dict__["__del__"]()

                    await asyncio.get_running_loop().run_in_executor(None, delete)
            assert callable(self.load)
            self.models[value] = await self.load(value)
            return self.models[value]


class Replica:
    """What ``serving.server.Server`` wires: loader -> LoadAhead -> the LRU -> ``take``."""

    def __init__(
        self,
        max_models: int = 2,
        release: asyncio.Event | None = None,
        del_gate: threading.Event | None = None,
    ) -> None:
        self.loader = PyfuncLoader()

        async def take(value: str) -> LoadedModel:
            loaded = await self.ahead.take(value)
            loaded.__dict__["__del__"] = lambda: self.ahead.evicted(value)
            return loaded

        async def load(value: str, artifact: Artifact, confirm: bool) -> LoadedModel:
            loaded = await self.loader.load(value, artifact, confirm=confirm)
            if release is not None:
                # A test's seam: the load ends when the test says, not when the machine is done.
                await release.wait()
            return loaded

        self.lru = RayOrderLru(take, max_models, del_gate)
        self.ahead = LoadAhead(load, self.lru)

    async def get(self, name: str, version: str, artifact: Artifact) -> LoadedModel:
        value = model_id(name, version, artifact)
        self.loader.check(value)
        return await self.ahead.model(value, artifact)

async def evicted_one(replica: Replica) -> None:
    """Until Ray's LRU has evicted a model (its ``__del__`` may still be held)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not replica.lru.evictions:
        assert loop.time() < deadline
        await asyncio.sleep(0.001)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Artifact, Artifact]:
    directory = tmp_path_factory.mktemp("good")
    return saved(directory, "a"), saved(directory, "b"), saved(directory, "c")


def test_versions_that_cannot_load_never_evict_the_loaded_defaults(
    tmp_path: Path, good: tuple[Artifact, Artifact, Artifact]
) -> None:
    a, b, _ = good
    store_down = Artifact((tmp_path / "not-downloadable").as_uri(), "0" * 64)
    broken = broken_pickle(tmp_path / "src")

    async def scenario() -> Replica:
        replica = Replica(max_models=2)
        first = await replica.get("a", "1", a)
        second = await replica.get("b", "1", b)
        for _ in range(3):
            with pytest.raises(ModelUnavailable, match="could not be loaded"):
                await replica.get("a", "2", store_down)
            with pytest.raises(ModelUnavailable, match="UnpicklingError"):
                await replica.get("a", "3", broken)
            # Forget the failures: each round tries both loads again.
            replica.loader = PyfuncLoader()
        assert await replica.get("a", "1", a) is first
        assert await replica.get("b", "1", b) is second
        return replica

    replica = asyncio.run(scenario())
    assert replica.lru.evictions == []
    assert list(replica.lru.models) == [model_id("a", "1", a), model_id("b", "1", b)]


def test_a_model_that_loads_takes_the_place_of_the_least_recently_used(
    good: tuple[Artifact, Artifact, Artifact],
) -> None:
    a, b, c = good

    async def scenario() -> Replica:
        replica = Replica(max_models=2)
        await replica.get("a", "1", a)
        await replica.get("b", "1", b)
        await replica.get("a", "1", a)  # b is now the least recently used
        await replica.get("c", "1", c)
        assert replica.ahead.resident == {model_id("a", "1", a), model_id("c", "1", c)}
        await replica.get("b", "1", b)  # evicted, so loaded again
        return replica

    replica = asyncio.run(scenario())
    assert replica.lru.evictions == [model_id("b", "1", b), model_id("a", "1", a)]
    assert replica.loader.attempts.count(model_id("b", "1", b)) == 2


def test_a_held_model_is_answered_without_calling_the_multiplexer(
    good: tuple[Artifact, Artifact, Artifact],
) -> None:
    a, b, _ = good

    async def scenario() -> tuple[Replica, list[LoadedModel]]:
        replica = Replica(max_models=2)
        first = await replica.get("a", "1", a)
        await replica.get("b", "1", b)
        calls = replica.lru.calls
        again = [await replica.get(n, "1", x) for n, x in (("a", a), ("b", b), ("a", a))]
        assert replica.lru.calls == calls
        return replica, [first, *again]

    replica, models = asyncio.run(scenario())
    assert models[0] is models[1] is models[3]
    assert replica.lru.evictions == []


def test_an_evicted_model_is_never_answered_from_the_held_models(
    good: tuple[Artifact, Artifact, Artifact],
) -> None:
    """Ray pops a model from its LRU, then runs a plain ``__del__`` in a worker thread: until
    that ends, the held models still name it. A request for it meanwhile gets a model loaded
    again, never the evicted one."""
    a, b, c = good
    gate = threading.Event()

    async def scenario() -> tuple[Replica, LoadedModel, LoadedModel]:
        replica = Replica(max_models=2, del_gate=gate)
        first = await replica.get("a", "1", a)
        await replica.get("b", "1", b)
        try:
            loading_c = asyncio.create_task(replica.get("c", "1", c))
            await evicted_one(replica)  # a is out of Ray's LRU, its __del__ held
            assert model_id("a", "1", a) in replica.ahead.resident
            asking_a = asyncio.create_task(replica.get("a", "1", a))
            await asyncio.sleep(0.05)
        finally:
            gate.set()
        await loading_c
        return replica, first, await asking_a

    replica, first, second = asyncio.run(scenario())
    assert second is not first
    assert replica.loader.attempts.count(model_id("a", "1", a)) == 2
    assert replica.lru.evictions[0] == model_id("a", "1", a)


def test_concurrent_requests_for_a_model_share_one_load(
    good: tuple[Artifact, Artifact, Artifact],
) -> None:
    a, _, _ = good

    async def scenario() -> tuple[Replica, list[LoadedModel]]:
        replica = Replica()
        models = await asyncio.gather(*(replica.get("a", "1", a) for _ in range(8)))
        return replica, list(models)

    replica, models = asyncio.run(scenario())
    assert replica.loader.attempts == [model_id("a", "1", a)]
    assert all(m is models[0] for m in models)


def test_concurrent_requests_for_a_broken_model_share_one_try_each_its_own_error(
    tmp_path: Path,
) -> None:
    broken = broken_pickle(tmp_path)

    async def scenario() -> tuple[Replica, list[BaseException]]:
        replica = Replica()
        answers = await asyncio.gather(
            *(replica.get("a", "2", broken) for _ in range(8)), return_exceptions=True
        )
        return replica, [a for a in answers if isinstance(a, BaseException)]

    replica, errors = asyncio.run(scenario())
    assert len(errors) == 8 and all(isinstance(e, ModelUnavailable) for e in errors)
    assert len({id(e) for e in errors}) == 8
    assert replica.loader.attempts == [model_id("a", "2", broken)]


def test_a_load_whose_requests_all_gave_up_is_not_kept(
    good: tuple[Artifact, Artifact, Artifact], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _, _ = good
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)

    def downloads() -> list[Path]:
        # Under this process's own parent (serving.model_dirs), which stays. Only there: the
        # load's libraries put temp files of their own in TMPDIR too (one, a file, once failed
        # a listing of every entry's children).
        return list((tmp_path / f"sigserve-models-{os.getpid()}").glob("model-*"))

    async def scenario() -> Replica:
        # Held until the request has given up: on a loaded machine a tiny model's load could
        # otherwise end, and answer the request, before the cancel lands.
        release = asyncio.Event()
        replica = Replica(release=release)
        request = asyncio.create_task(replica.get("a", "1", a))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not downloads():  # its download directory: the load has begun
            assert loop.time() < deadline
            await asyncio.sleep(0.001)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        release.set()
        # The load runs on and ends; with nobody to take it, the model and its files go.
        while downloads():
            assert loop.time() < deadline, downloads()
            await asyncio.sleep(0.01)
        return replica

    replica = asyncio.run(scenario())
    assert replica.lru.models == {} and replica.ahead.resident == set()


def test_a_cancelled_eviction_never_leaves_the_evicted_model_answerable(
    good: tuple[Artifact, Artifact, Artifact],
) -> None:
    """A request cancelled while Ray awaits the evicted model's ``__del__`` in a thread (the
    client went away): the evicted model is not answered from the held models after it."""
    a, b, c = good
    gate = threading.Event()

    async def scenario() -> tuple[LoadedModel, LoadedModel]:
        replica = Replica(max_models=2, del_gate=gate)
        first = await replica.get("a", "1", a)
        await replica.get("b", "1", b)
        try:
            loading_c = asyncio.create_task(replica.get("c", "1", c))
            await evicted_one(replica)
            loading_c.cancel()
            await asyncio.gather(loading_c, return_exceptions=True)
            asking_a = asyncio.create_task(replica.get("a", "1", a))
            await asyncio.sleep(0.05)  # answered from the map, it would be done by now
        finally:
            gate.set()
        return first, await asking_a

    first, again = asyncio.run(scenario())
    assert again is not first, "the evicted model was answered from the held models"

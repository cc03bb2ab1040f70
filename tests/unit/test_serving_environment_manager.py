"""A replica's view of the environments of a version's own (``serving.environments``): the
tasks it starts, a build racing its let-go, a failed build's backoff, touches, and a model whose
environment went. Ray is the seam: ``InProcess`` keeps each environment's actor body (the real
``EnvironmentHost``) in this process, calls it in a worker thread as Ray would, and names it
gone once killed; the manager under test is the real one."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from serving.environment_actors import ActorGone
from serving.environment_builds import EnvironmentBuildFailed
from serving.environment_errors import EnvironmentUnavailable
from serving.environment_host import EnvironmentHost
from serving.environments import EnvironmentManager
from serving.loader import LoadFailed
from tests.unit.test_serving_environments import LAYERED, Numerals, entry_for, target_of
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry


class Actor:
    def __init__(self, cluster: InProcess, name: str) -> None:
        self.cluster, self.name = cluster, name
        self.host: EnvironmentHost | None = None
        self.alive = True


class InProcess:
    """``serving.environment_actors.Cluster`` in this process."""

    def __init__(self) -> None:
        self.actors: dict[str, Actor] = {}
        self.created: list[Actor] = []
        self.killed = threading.Event()

    def existing(self, name: str, namespace: str) -> Any | None:
        actor = self.actors.get(name)
        return actor if actor is not None and actor.alive else None

    def create(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
               ) -> Any:  # fmt: skip
        assert options["lifetime"] == "detached" and options["name"].startswith("sigserve-env-")
        actor = Actor(self, options["name"])
        cluster = self

        class Host(EnvironmentHost):
            def exit(self, why: str) -> None:
                super().exit(why)
                cluster.kill(actor)  # as ``RayEnvironmentHost`` kills its own actor

        actor.host = Host(*args, **kwargs)
        self.actors[actor.name] = actor
        self.created.append(actor)
        return actor

    def kill(self, actor: Actor) -> None:
        self.killed.set()
        actor.alive = False
        if self.actors.get(actor.name) is actor:
            del self.actors[actor.name]

    def _method(self, actor: Actor, method: str) -> Any:
        if not actor.alive or actor.host is None:
            raise ActorGone(f"the actor {actor.name} died")
        return getattr(actor.host, method)

    async def call(self, actor: Actor, method: str, *args: Any) -> Any:
        return await asyncio.to_thread(self._method(actor, method), *args)

    def call_blocking(self, actor: Actor, method: str, *args: Any) -> Any:
        return self._method(actor, method)(*args)

    def tell(self, actor: Actor, method: str, *args: Any) -> None:
        if actor.alive and actor.host is not None:
            getattr(actor.host, method)(*args)

    def forwarded_env(self) -> dict[str, str]:
        return {}

    def live(self) -> list[str]:
        return [a.name for a in self.created if a.alive]


class Resolver:
    """The uv dry run's seam: passes, fails, or waits for ``release``."""

    def __init__(self, failure: str | None = None, gate: bool = False) -> None:
        self.failure = failure
        self.calls = 0
        self.entered = threading.Event()
        self.released = threading.Event()
        if not gate:
            self.released.set()

    def __call__(self, spec: Any, index: Any, timeout_s: float) -> None:
        self.calls += 1
        self.entered.set()
        self.released.wait(10)
        if self.failure:
            raise EnvironmentBuildFailed(self.failure)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def manager(cluster: InProcess, resolver: Resolver | None = None, **kwargs: Any
            ) -> EnvironmentManager:  # fmt: skip
    return EnvironmentManager("app", timeout_s=30, concurrency=1, index=lambda: ([], {}),
                              cluster=cluster, resolver=resolver or Resolver(),
                              **{"idle_ttl_s": 0.0, **kwargs})  # fmt: skip


def table(revision: int, *entries: VersionEntry) -> RoutingTable:
    models = {f"m{i}": ModelEntry(name=f"m{i}", default_version="1", versions={"1": entry})
              for i, entry in enumerate(entries)}  # fmt: skip
    return RoutingTable(revision=revision, models=models)


def test_a_load_before_the_build_keeps_the_build_it_starts_and_answers_503(
    tmp_path: Path,
) -> None:
    cluster = InProcess()
    target = target_of("numerals", entry_for(tmp_path, "numerals", Numerals()))

    async def scenario() -> None:
        environments = manager(cluster)
        with pytest.raises(LoadFailed, match="being built"):
            await environments.load(target.artifact)
        # Held by the manager, not only by the loop (which keeps weak references to tasks).
        assert environments.pending == 1
        await environments.drain()
        loaded = await environments.load(target.artifact)
        answer = await asyncio.to_thread(loaded.model.predict, pd.DataFrame({"n": [5]}))
        assert answer["answer"].tolist() == ["V"]
        loaded.close()

    asyncio.run(scenario())
    assert len(cluster.created) == 1


def test_an_environment_let_go_while_its_build_ran_is_killed_not_leaked(tmp_path: Path) -> None:
    cluster = InProcess()
    resolver = Resolver(gate=True)
    entry = entry_for(tmp_path, "numerals", Numerals())

    async def scenario() -> str:
        environments = manager(cluster, resolver)
        environments.offer(table(1, entry))
        build = asyncio.create_task(environments.build(LAYERED))
        await asyncio.to_thread(resolver.entered.wait, 10)
        # The table drops it while its build resolves, before any actor exists: the let-go
        # finds nothing to kill.
        environments.offer(table(2))
        await asyncio.sleep(0.05)
        resolver.released.set()
        with pytest.raises(EnvironmentBuildFailed) as failed:
            await build
        await environments.drain()
        return failed.value.cause

    cause = asyncio.run(scenario())
    assert "was let go while it was being built" in cause
    assert len(cluster.created) == 1 and cluster.live() == []


def test_a_failed_build_is_tried_again_only_after_a_backoff_that_doubles(tmp_path: Path) -> None:
    cluster = InProcess()
    resolver = Resolver("its environment (roman==99.0) could not be built: No solution found")
    clock = Clock()
    target = target_of("numerals", entry_for(tmp_path, "numerals", Numerals()))

    async def scenario() -> None:
        environments = manager(cluster, resolver, clock=clock, retry_s=5, max_retry_s=300)
        for _ in range(2):
            with pytest.raises(EnvironmentBuildFailed, match="No solution found"):
                await environments.build(LAYERED)
        assert resolver.calls == 1  # the second was told the first's cause at once
        with pytest.raises(LoadFailed, match="No solution found; it is built again in 5 s"):
            await environments.load(target.artifact)
        assert environments.pending == 0  # and started no build
        clock.now += 5
        with pytest.raises(EnvironmentBuildFailed):
            await environments.build(LAYERED)
        assert resolver.calls == 2
        clock.now += 5  # the backoff doubled: 10 s now
        with pytest.raises(EnvironmentBuildFailed):
            await environments.build(LAYERED)
        assert resolver.calls == 2
        clock.now += 5
        resolver.failure = None  # the index has it now
        await environments.build(LAYERED)
        assert resolver.calls == 3 and cluster.live()

    asyncio.run(scenario())


def test_environments_the_table_names_are_touched_and_an_untouched_one_goes_by_itself(
    tmp_path: Path,
) -> None:
    cluster = InProcess()
    entry = entry_for(tmp_path, "numerals", Numerals())

    async def scenario() -> float:
        environments = manager(cluster, idle_ttl_s=0.6)
        environments.offer(table(1, entry))
        await environments.build(LAYERED)
        await asyncio.sleep(1.5)  # over twice the TTL: touched every 0.2 s meanwhile
        assert cluster.live(), "an environment the table names went"
        await environments.close()  # no replica touches it any more
        stopped = time.perf_counter()
        await asyncio.to_thread(cluster.killed.wait, 5)
        return time.perf_counter() - stopped

    reaped_s = asyncio.run(scenario())
    assert cluster.live() == [] and 0.4 < reaped_s < 1.5, reaped_s
    assert "no replica touched it" in (cluster.created[0].host.exited or "")  # type: ignore[union-attr]


def test_a_model_whose_environment_went_answers_503_then_comes_back_loaded_again(
    tmp_path: Path,
) -> None:
    cluster = InProcess()
    target = target_of("numerals", entry_for(tmp_path, "numerals", Numerals()))
    one = pd.DataFrame({"n": [14]})

    async def scenario() -> None:
        environments = manager(cluster)
        await environments.build(LAYERED)
        loaded = await environments.load(target.artifact)
        cluster.kill(cluster.created[0])  # reaped, killed by an operator, its node lost
        with pytest.raises(EnvironmentUnavailable, match="being started again") as down:
            await asyncio.to_thread(loaded.model.predict, one)
        assert down.value.status == 503
        await asyncio.sleep(0.05)  # the manager hears of it on its loop ...
        await environments.drain()  # ... and builds it again
        answer = await asyncio.to_thread(loaded.model.predict, one)
        assert answer["answer"].tolist() == ["XIV"]
        assert cluster.created[1].host.info()["loads"] == 1  # type: ignore[union-attr]
        loaded.close()

    asyncio.run(scenario())
    assert len(cluster.created) == 2

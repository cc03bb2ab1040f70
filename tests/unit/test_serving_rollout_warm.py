"""A rollout's candidate is loaded before this replica routes to it (serving.rollout_warm)."""

from __future__ import annotations

import asyncio

from serving.resolve import Target
from serving.rollout_routing import choose
from serving.rollout_warm import CandidateWarmer
from tests.unit.test_serving_rollout_routing import live, table


def test_the_default_answers_until_the_candidate_is_loaded_here() -> None:
    async def scenario() -> None:
        loaded, release = [], asyncio.Event()

        async def load(target: Target) -> None:
            loaded.append(target.model_id)
            await release.wait()

        warmer = CandidateWarmer(load)
        routing = table(1.0)
        warmer.offer(routing)
        warmer.offer(routing)  # a table again while it loads: one load
        await asyncio.sleep(0)
        assert len(loaded) == 1 and loaded[0].startswith("m/2@")
        chosen = choose(routing, "m", {}, ready=warmer.ready)
        assert chosen is not None and chosen.version == "1" and not chosen.shadowable
        release.set()
        await warmer.drain()
        chosen = choose(routing, "m", {}, ready=warmer.ready)
        assert chosen is not None and chosen.version == "2"
        warmer.offer(routing)  # loaded: not again
        assert len(loaded) == 1

    asyncio.run(scenario())


def test_a_candidate_that_does_not_load_is_never_routed_to_and_is_tried_with_the_next_table() -> (
    None
):
    async def scenario() -> None:
        tries = []

        async def load(target: Target) -> None:
            tries.append(target.model_id)
            raise RuntimeError("cannot load")

        warmer = CandidateWarmer(load)
        routing = table(1.0)
        warmer.offer(routing)
        await warmer.drain()
        assert {choose(routing, "m", {}, ready=warmer.ready).version for _ in range(50)} == {"1"}  # type: ignore[union-attr]
        warmer.offer(routing)
        await warmer.drain()
        assert len(tries) == 2

    asyncio.run(scenario())


def test_a_rollout_that_sends_the_candidate_nothing_loads_nothing() -> None:
    async def scenario() -> None:
        tries = []

        async def load(target: Target) -> None:
            tries.append(target.model_id)

        warmer = CandidateWarmer(load)
        warmer.offer(table(0.0))
        await warmer.drain()
        assert tries == []

    asyncio.run(scenario())


def test_candidates_of_rollouts_that_ended_are_forgotten() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def load(target: Target) -> None:
            if target.version.version == "3":
                await release.wait()

        warmer = CandidateWarmer(load)
        warmer.offer(table(1.0))
        await warmer.drain()
        assert len(warmer) == 1
        ended = table(1.0)
        ended.models["m"] = ended.models["m"].model_copy(update={"rollout": None})
        warmer.offer(ended)  # the rollout ended: its candidate is not held ready any more
        assert len(warmer) == 0
        warmer.offer(table(1.0, candidate=live("3")))  # v3 loads while its rollout ends
        warmer.offer(ended)
        release.set()
        await warmer.drain()
        assert len(warmer) == 0

    asyncio.run(scenario())

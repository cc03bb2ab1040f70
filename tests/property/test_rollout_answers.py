"""A rollout never changes an answer: each request gets what its chosen version gives it alone.

Random bodies, sent at once (so that they share batches) to a model under a random rollout
(weight, shadow share, with or without routing keys) through the real HTTP API, model host and
batcher, the two versions answering differently on some inputs. Each answer must be exactly what
the version named in its ``sigserve-model-version`` header answers that body alone; requests that
name a version are never rerouted; every shadowed request is compared or dropped, never lost,
and the comparisons agree exactly where the two versions' answers do.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from hypothesis import event, given
from hypothesis import strategies as st
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from serving.api import create_app
from serving.loader import LoadedModel
from serving.model_host import ModelHost
from serving.resolve import Target
from serving.rollout_path import VERSION_HEADER, RolloutPath
from serving.rollout_routing import ROUTING_KEY_HEADER
from serving.rollout_shadow import Shadows
from serving.table_source import TableSource
from wire.routing_table import ModelEntry, Rollout, RoutingTable, VersionEntry, VersionState

SIGNATURE = ModelSignature(
    Schema([ColSpec("string", "prompt")]), Schema([ColSpec("string", "out")])
).to_dict()


def answer(version: str, prompt: str) -> str:
    """Version 1 upper-cases; version 2 too, except prompts starting with "b", which it reverses."""
    if version == "2" and prompt.startswith("b"):
        return prompt[::-1]
    return prompt.upper()


class Rows:
    def __init__(self, version: str) -> None:
        self.version = version

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        return pd.DataFrame({"out": [answer(self.version, p) for p in data["prompt"]]})


def table(rollout: Rollout) -> RoutingTable:
    versions = {
        v: VersionEntry(
            version=v, state=VersionState.LIVE, signature=SIGNATURE,
            source=f"models:/m-{v}", mlmodel_digest=v * 64,
        )
        for v in ("1", "2")
    }  # fmt: skip
    entry = ModelEntry(
        name="m", default_version="1", contract=SIGNATURE, versions=versions, rollout=rollout
    )
    return RoutingTable(revision=1, models={"m": entry})


def never(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("no controller here", request=request)


prompts = st.lists(
    st.sampled_from(["a", "b", "ab", "ba", "bob", "cat", "b1", ""]), min_size=1, max_size=4
)
request = st.tuples(
    prompts,
    st.one_of(st.none(), st.sampled_from(["alice", "bob", "carol"])),  # routing key
    st.sampled_from([None, None, None, "1", "2"]),  # a version named in the path
)


@given(
    weight=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
    shadow=st.sampled_from([0.0, 0.5, 1.0]),
    requests=st.lists(request, min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_each_request_gets_its_chosen_versions_answer_alone(
    weight: float,
    shadow: float,
    requests: list[tuple[list[str], str | None, str | None]],
    seed: int,
) -> None:
    rng = random.Random(seed)
    shadowed: list[bool] = []

    def draw() -> float:
        point = rng.random()
        shadowed.append(point < shadow)
        return point

    async def scenario() -> tuple[list[httpx.Response], RolloutPath]:
        async def get_model(target: Target) -> LoadedModel:
            return LoadedModel(Rows(target.version.version), Path("/nonexistent/sigserve-test"))

        source = TableSource("http://controller", transport=httpx.MockTransport(never))
        source.offer(table(Rollout(id="r", candidate="2", weight=weight, shadow=shadow)))
        rollouts = RolloutPath()
        # Shadows run at once (quiet_s=0): what this checks is whose answer each client gets,
        # not when a shadow gives way (tests/unit/test_serving_rollout_yield.py), which only
        # makes every example wait.
        rollouts.shadows = Shadows(rollouts.counts, draw=draw, queue_size=4, workers=1, quiet_s=0.0)
        app = create_app(source, ModelHost(get_model), rollouts=rollouts)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sigserve") as client:

            async def send(item: tuple[list[str], str | None, str | None]) -> httpx.Response:
                body, key, named = item
                path = f"/models/m/versions/{named}/serve" if named else "/models/m/serve"
                headers = {ROUTING_KEY_HEADER: key} if key else {}
                return await client.post(path, json=[{"prompt": p} for p in body], headers=headers)

            responses = await asyncio.gather(*(send(item) for item in requests))
            await rollouts.shadows.drain()
        return list(responses), rollouts

    responses, rollouts = asyncio.run(scenario())
    for (body, _, named), response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        version = response.headers[VERSION_HEADER]
        if named is not None:
            assert version == named
        assert response.json() == [{"out": answer(version, p)} for p in body]
    event(f"versions answered: {sorted({r.headers[VERSION_HEADER] for r in responses})}")
    (report,) = rollouts.counts.reports(table(Rollout(id="r", candidate="2", weight=weight)))
    routed = sum(1 for _, _, named in requests if named is None)
    assert sum(counts.requests for counts in report.versions.values()) == routed
    if shadow:
        tally = rollouts.counts.shadow("m", "r")
        assert tally.compared + tally.dropped == sum(shadowed)
        assert tally.failed == 0
        event(f"shadows dropped: {tally.dropped > 0}")

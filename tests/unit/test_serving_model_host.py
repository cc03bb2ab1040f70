"""Loading defaults ahead of the table, and serving through batches: the real host, models
made in-process (the loader and Ray's LRU are tested elsewhere)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from serving.loader import LoadedModel
from serving.model_host import ModelHost
from serving.resolve import Target, resolve
from serving.table_source import TableSource
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState


class Model:
    def __init__(self, target: Target, example: Any) -> None:
        self.target = target
        self.input_example = example
        self.predicted: list[Any] = []

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        self.predicted.append(data)
        return pd.DataFrame({"out": [str(p).upper() for p in data["prompt"]]})


class Models:
    """``get_model`` for the host: loads by model id, counts loads, can refuse one version."""

    def __init__(self, broken: set[str] | None = None) -> None:
        self.loaded: dict[str, Model] = {}
        self.loads: list[str] = []
        self.broken = broken or set()

    async def __call__(self, target: Target) -> LoadedModel:
        if target.model_id not in self.loaded:
            self.loads.append(target.model_id)
            if target.version.version in self.broken:
                raise RuntimeError("no such file: model.pkl")
            example = pd.DataFrame({"prompt": ["warm"]})
            self.loaded[target.model_id] = Model(target, example)
        return LoadedModel(self.loaded[target.model_id], Path("/nonexistent/sigserve-test"))


def version(v: str, state: VersionState = VersionState.LIVE) -> VersionEntry:
    return VersionEntry(version=v, state=state, source=f"models:/m-{v}", mlmodel_digest=v * 64)


def table(revision: int, **defaults: tuple[str, VersionState]) -> RoutingTable:
    models = {
        name: ModelEntry(name=name, default_version=v, versions={v: version(v, state)})
        for name, (v, state) in defaults.items()
    }
    return RoutingTable(revision=revision, models=models)


LIVE, QUARANTINED = VersionState.LIVE, VersionState.QUARANTINED


def loaded_versions(models: Models) -> list[str]:
    return [i.split("@")[0] for i in models.loads]


def test_new_live_defaults_are_loaded_and_warmed_with_their_example() -> None:
    models = Models()
    host = ModelHost(models, max_models=4)
    first = table(1, a=("1", LIVE), b=("1", QUARANTINED))
    asyncio.run(host.warm(first, None))
    # A quarantined default (left as default because nothing else is decided) is never loaded.
    assert loaded_versions(models) == ["a/1"]
    (model,) = models.loaded.values()
    assert list(model.predicted[0]["prompt"]) == ["warm"]

    asyncio.run(host.warm(table(2, a=("1", LIVE), b=("2", LIVE)), first))
    # a/1 was already the default: only the new one is loaded.
    assert loaded_versions(models) == ["a/1", "b/2"]


def test_no_more_defaults_are_loaded_than_a_replica_keeps() -> None:
    models = Models()
    host = ModelHost(models, max_models=2)
    asyncio.run(host.warm(table(1, a=("1", LIVE), b=("1", LIVE), c=("1", LIVE)), None))
    assert len(models.loads) == 2


def test_a_default_that_fails_to_load_is_left_to_its_first_request() -> None:
    models = Models(broken={"2"})
    host = ModelHost(models, max_models=4)
    asyncio.run(host.warm(table(1, a=("2", LIVE), b=("1", LIVE)), None))  # does not raise
    assert sorted(loaded_versions(models)) == ["a/2", "b/1"]
    assert host.warmed == [i for i in models.loads if i.startswith("b/")]


def test_a_table_is_answered_from_only_once_its_defaults_are_loaded() -> None:
    models = Models()
    host = ModelHost(models, max_models=4)
    seen: list[tuple[int | None, list[str]]] = []

    async def prepare(new: RoutingTable, held: RoutingTable | None) -> None:
        await host.warm(new, held)
        # Still the old table while the new one's defaults are being loaded.
        seen.append((source.table.revision if source.table else None, loaded_versions(models)))

    published = table(3, a=("1", LIVE))

    def controller(request: httpx.Request) -> httpx.Response:
        if int(request.url.params["after"]) < 3:
            return httpx.Response(200, content=published.model_dump_json())
        return httpx.Response(204)

    source = TableSource(
        "http://controller", transport=httpx.MockTransport(controller), prepare=prepare
    )

    async def run() -> int | None:
        await source.start(wait_s=5)
        await source.stop()
        return source.table.revision if source.table else None

    assert asyncio.run(run()) == 3
    assert seen == [(None, ["a/1"])]


def test_serve_cuts_a_batch_back_into_each_requests_records() -> None:
    models = Models()
    host = ModelHost(models, max_models=4)
    target_table = table(1, a=("1", LIVE))
    target = resolve(target_table, "a", None)

    async def run() -> list[Any]:
        return await asyncio.gather(
            *(host.serve(target, [{"prompt": p}], None, None) for p in ("x", "y", "z"))
        )

    assert asyncio.run(run()) == [[{"out": "X"}], [{"out": "Y"}], [{"out": "Z"}]]

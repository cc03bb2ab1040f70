"""A proven version that will not be its model's default is kept loaded when the replica's
multiplexer has a free slot (``LoadAhead.keep``, ``Prover(keep=)``), so its first request
loads nothing again; never at a loaded model's cost.

The multiplexer is a stand-in with Ray's semantics (``ray/serve/multiplex.py``: evict the least
recently used under its lock, then call the loader), so an eviction shows; the loader and
``LoadAhead`` are the real ones."""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from pathlib import Path

import pandas as pd
import pytest
from mlflow.models import infer_signature
from mlflow.pyfunc import save_model

from serving.load_ahead import LoadAhead
from serving.loader import LoadedModel, PyfuncLoader
from serving.model_ids import Artifact
from serving.proofs import Proof, Prover
from serving.resolve import Target, checked_artifact
from tests.unit.test_serving_load_proofs import Raises, Upper, until
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState

EXAMPLE = pd.DataFrame({"prompt": ["hello"]})
SIGNATURE = infer_signature(EXAMPLE, pd.DataFrame({"answer": ["HELLO"]}))
LIMIT = 2


class Multiplexer:
    """Ray's LRU in miniature: at ``LIMIT``, the least recently used goes before a load."""

    def __init__(self) -> None:
        self.held: OrderedDict[str, LoadedModel] = OrderedDict()
        self.evicted: list[str] = []
        self.ahead: LoadAhead | None = None

    async def __call__(self, value: str) -> LoadedModel:
        assert self.ahead is not None
        if value in self.held:
            self.held.move_to_end(value)
            return self.held[value]
        while len(self.held) >= LIMIT:
            gone, _ = self.held.popitem(last=False)
            self.evicted.append(gone)
            self.ahead.evicted(gone)
        self.held[value] = await self.ahead.take(value)
        return self.held[value]


def _artifact(directory: Path, name: str, model: object = None) -> tuple[str, Artifact]:
    path = directory / name
    if not path.exists():
        save_model(path=str(path), python_model=model or Upper(), pip_requirements=[],
                   signature=SIGNATURE, input_example=EXAMPLE)  # fmt: skip
    entry = _entry(path)
    artifact = checked_artifact(name, entry)
    return f"{name}/1@{artifact.key}", artifact


def _entry(path: Path) -> VersionEntry:
    digest = hashlib.sha256((path / "MLmodel").read_bytes()).hexdigest()
    return VersionEntry(version="1", state=VersionState.PENDING, source=path.as_uri(),
                        mlmodel_digest=digest, signature=SIGNATURE.to_dict(),
                        awaiting_proof=True)  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keep")


def _stack() -> tuple[PyfuncLoader, Multiplexer, LoadAhead]:
    loader = PyfuncLoader()
    lru = Multiplexer()
    lru.ahead = LoadAhead(lambda v, a, c: loader.load(v, a, confirm=c), lru)
    return loader, lru, lru.ahead


def test_a_proofs_load_goes_into_a_free_slot_and_a_request_then_loads_nothing(
    models: Path,
) -> None:
    async def run() -> None:
        loader, lru, ahead = _stack()
        first, a = _artifact(models, "a")
        await ahead.model(first, a)
        proven, b = _artifact(models, "b")
        loaded = await loader.load(proven, b)  # the proof's load, beside the multiplexer
        assert await ahead.keep(proven, b, loaded, LIMIT)
        assert lru.held[proven] is loaded and ahead.resident == {first, proven}
        assert await ahead.model(proven, b) is loaded  # the first request
        assert loader.attempts == [first, proven] and lru.evicted == []

    asyncio.run(run())


def test_a_full_multiplexer_keeps_what_it_holds(models: Path) -> None:
    async def run() -> None:
        loader, lru, ahead = _stack()
        held = [_artifact(models, n) for n in ("a", "b")]
        for value, artifact in held:
            await ahead.model(value, artifact)
        proven, c = _artifact(models, "c")
        loaded = await loader.load(proven, c)
        assert not await ahead.keep(proven, c, loaded, LIMIT)
        assert lru.evicted == [] and ahead.resident == {v for v, _ in held}

    asyncio.run(run())


def test_a_load_under_way_counts_as_taken(models: Path) -> None:
    async def run() -> None:
        loader, lru, ahead = _stack()
        first, a = _artifact(models, "a")
        await ahead.model(first, a)
        wanted, b = _artifact(models, "b")
        proven, c = _artifact(models, "c")
        loaded = await loader.load(proven, c)
        # A request's load that has not reached the multiplexer yet takes the last slot.
        request = asyncio.create_task(ahead.model(wanted, b))
        await asyncio.sleep(0)
        assert not await ahead.keep(proven, c, loaded, LIMIT)
        await request
        assert lru.evicted == [] and ahead.resident == {first, wanted}

    asyncio.run(run())


class _Seen:
    def __init__(self, keep: bool) -> None:
        self.kept: list[str] = []
        self.loaded: list[LoadedModel] = []
        self.reports: list[Proof] = []
        self._keep = keep

    async def load(self, t: Target, default: bool) -> LoadedModel:
        loaded = await PyfuncLoader().load(t.model_id, t.artifact)
        self.loaded.append(loaded)
        return loaded

    async def keep(self, t: Target, loaded: LoadedModel) -> bool:
        self.kept.append(t.model_id)
        return self._keep

    async def report(self, proof: Proof) -> bool:
        self.reports.append(proof)
        return True


def _proved(models: Path, keep: bool, model: object = None, default: str = "2") -> _Seen:
    name = "raises" if model is not None else "a"
    _artifact(models, name, model)
    entry = _entry(models / name)
    table = RoutingTable(revision=1, models={"m": ModelEntry(
        name="m", default_version=default, versions={"1": entry},
    )})  # fmt: skip
    seen = _Seen(keep)

    async def run() -> None:
        prover = Prover(seen.load, seen.report, timeout_s=lambda t: 5.0, keep=seen.keep)
        prover.offer(table)
        await until(lambda: bool(seen.reports))
        await prover.stop()

    asyncio.run(run())
    return seen


def test_a_passed_version_kept_by_the_replica_is_not_let_go(models: Path) -> None:
    seen = _proved(models, keep=True)
    assert seen.reports[0].outcome == "passed" and len(seen.kept) == 1
    assert seen.loaded[0].directory.exists()  # still the multiplexer's to serve
    seen.loaded[0].close()


def test_a_passed_version_the_replica_has_no_room_for_is_let_go(models: Path) -> None:
    seen = _proved(models, keep=False)
    assert len(seen.kept) == 1 and not seen.loaded[0].directory.exists()


def test_a_failed_version_is_never_kept(models: Path) -> None:
    seen = _proved(models, keep=True, model=Raises())
    assert seen.reports[0].outcome == "failed" and seen.kept == []
    assert not seen.loaded[0].directory.exists()


def test_a_default_to_be_is_not_offered_again(models: Path) -> None:
    # It was loaded through the multiplexer already (``Server._load_to_prove``).
    seen = _proved(models, keep=True, default="1")
    assert seen.kept == [] and seen.loaded[0].directory.exists()
    seen.loaded[0].close()

"""What every new table costs the event loop (issue 20: at 10,000 models x 5 versions the gauges
and the changes logged took ~130 ms of it per publish): a publish keeps the entries of the
models that did not move, frozen, so those are not looked into again (``controller/publisher.py``
``table_gauges``, ``wire.routing_table.changes``); the figures stay those of a full count."""

from __future__ import annotations

from collections import Counter
from typing import Any

from prometheus_client import generate_latest

from controller.metrics import STATES, Metrics
from controller.publisher import table_gauges
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState, changes

LIVE, PENDING, QUARANTINED = VersionState.LIVE, VersionState.PENDING, VersionState.QUARANTINED


class Watched(dict[str, VersionEntry]):
    """A model's versions that count how often they are looked into."""

    looks = 0

    def values(self) -> Any:
        Watched.looks += 1
        return super().values()

    def keys(self) -> Any:
        Watched.looks += 1
        return super().keys()

    def __iter__(self) -> Any:
        Watched.looks += 1
        return super().__iter__()


def _model(name: str, *states: VersionState, watched: bool = False) -> ModelEntry:
    versions = {
        str(n): VersionEntry(version=str(n), state=s, source=f"models:/{name}")
        for n, s in enumerate(states, 1)
    }
    if watched:
        # Built without validation, which would copy the dict into a plain one.
        return ModelEntry.model_construct(
            name=name, default_version="1", versions=Watched(versions)
        )
    return ModelEntry(name=name, default_version="1" if states else None, versions=versions)


def _gauges(metrics: Metrics) -> dict[str, float]:
    found = {}
    for line in generate_latest(metrics.registry).decode().splitlines():
        for state in STATES:
            if line.startswith(f'sigserve_model_versions{{state="{state}"}} '):
                found[state] = float(line.rsplit(" ", 1)[1])
    return found


def _counted(table: RoutingTable) -> dict[str, float]:
    states = Counter(v.state.value for m in table.models.values() for v in m.versions.values())
    return {state: float(states.get(state, 0)) for state in STATES}


def test_the_gauges_count_again_only_the_models_that_moved() -> None:
    metrics = Metrics.create()
    update = table_gauges(metrics)
    kept = _model("kept", LIVE, LIVE, QUARANTINED, watched=True)
    first = RoutingTable(
        revision=1, epoch="e",
        models={"kept": kept, "moves": _model("moves", PENDING), "goes": _model("goes", LIVE)},
    )  # fmt: skip
    update(first)
    assert _gauges(metrics) == _counted(first)
    looked = Watched.looks
    second = RoutingTable(
        revision=2, epoch="e",
        models={"kept": kept, "moves": _model("moves", LIVE, PENDING), "new": _model("new")},
    )  # fmt: skip
    update(second)
    assert Watched.looks == looked, "a model whose entry is the last table's was counted again"
    assert _gauges(metrics) == _counted(second)
    # Another epoch, every entry new: counted from scratch.
    third = RoutingTable(revision=1, epoch="f", models={"moves": _model("moves", QUARANTINED)})
    update(third)
    assert _gauges(metrics) == _counted(third)


def test_the_changes_of_a_table_do_not_look_into_the_models_it_kept() -> None:
    kept = _model("kept", LIVE, PENDING, watched=True)
    before = RoutingTable(revision=1, epoch="e", models={"kept": kept, "m": _model("m", PENDING)})
    after = RoutingTable(revision=2, epoch="e", models={"kept": kept, "m": _model("m", LIVE)})
    looked = Watched.looks
    assert changes(after, before) == ["m/1=live"]
    assert Watched.looks == looked
    # An equal entry that is another object is still compared: nothing changed in it.
    again = _model("kept", LIVE, PENDING)
    assert changes(RoutingTable(revision=3, epoch="e", models={"kept": again}), after) == [
        "m/1=removed"
    ]

"""Quarantine and release by hand, and the audit log that answers who did what, on a real store
(SQLite and PostgreSQL: ``database_url``, tests/conftest.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller import commands
from controller.artifacts import ArtifactFacts
from controller.compatibility import Policy
from controller.database import make_engine, migrate
from controller.environment import ArtifactEnvironment, ServingEnvironment
from controller.exceptions import InvalidRequest, PinRefused
from controller.reconciler import Reconciler
from controller.registry import ObservedModel, ObservedVersion
from controller.store import Store
from wire.routing_table import VersionState

ENV = ServingEnvironment(python_version="3.11.9", distributions={"mlflow-skinny": "3.17.2"})


def sig(name: str) -> dict[str, Any]:
    return {"inputs": json.dumps([{"type": "string", "name": name, "required": True}]),
            "outputs": None, "params": None}


class Registry:
    def __init__(self, signatures: dict[str, dict[str, Any]]) -> None:
        self.signatures = signatures

    def model(self, name: str) -> ObservedModel:
        return ObservedModel(1, {}, {})

    def versions(self, name: str) -> list[ObservedVersion]:
        return [ObservedVersion(v, "READY", f"models:/m-{v}") for v in self.signatures]

    def artifact(self, name: str, version: str) -> ArtifactFacts:
        return ArtifactFacts(f"models:/m-{version}", version.ljust(64, "0"),
                             self.signatures[version], ArtifactEnvironment([], "3.11.9", False))


@pytest.fixture()
def store(database_url: str) -> Store:
    engine = make_engine(database_url)
    migrate(engine)
    s = Store(engine)
    registry = Registry({"1": sig("prompt"), "2": sig("prompt"), "3": sig("text")})
    Reconciler(s, registry, ENV, write_back=False).reconcile(
        "m", "webhook:d-7")
    return s


def states(store: Store) -> dict[str, str]:
    record = store.load_model("m")
    assert record is not None
    return {k: v.state.value for k, v in record.versions.items()}


def test_a_quarantine_by_hand_survives_rechecks_until_released(store: Store) -> None:
    record = commands.quarantine(store, "m", "2", "bad answers in the canary", ENV)
    v2 = record.versions["2"]
    assert v2.state is VersionState.QUARANTINED
    assert v2.reasons[0].startswith("quarantined by hand by admin at ")
    assert v2.reasons[0].endswith(": bad answers in the canary")
    # A policy change re-checks every version; the override holds.
    commands.set_policies(store, "m", ENV, compatibility=Policy.NONE)
    assert states(store)["2"] == "quarantined"
    assert states(store)["3"] == "live"  # policy none lets the renamed input through
    released = commands.release(store, "m", "2", "fixed", ENV)
    assert released.versions["2"].state is VersionState.LIVE
    assert released.versions["2"].override is None
    # The table carries the reasons too.
    commands.quarantine(store, "m", "1", "leaks PII", ENV)
    entry = store.publish().models["m"].versions["1"]
    assert entry.state is VersionState.QUARANTINED and "leaks PII" in entry.reasons[0]


def test_release_of_a_gate_quarantine_is_a_visible_override(store: Store) -> None:
    assert states(store)["3"] == "quarantined"
    record = commands.release(store, "m", "3", "clients migrated to 'text'", ENV)
    v3 = record.versions["3"]
    assert v3.state is VersionState.LIVE
    assert v3.warnings[0].startswith("released by hand by admin at ")
    assert "the gate's reasons: input 'prompt'" in v3.warnings[0]
    back = commands.remove_override(store, "m", "3", ENV)
    assert back.versions["3"].state is VersionState.QUARANTINED
    with pytest.raises(InvalidRequest):
        commands.release(store, "m", "1", "nothing to release", ENV)


def test_the_audit_log_says_who_made_a_version_the_default_when_and_what_was_before(
    store: Store,
) -> None:
    commands.pin_default(store, "m", "2", ENV)
    with pytest.raises(PinRefused):
        commands.pin_default(store, "m", "3", ENV)
    events = store.events("m", limit=50)
    pin = next(e for e in events if e.kind == "pin")
    assert (pin.version, pin.actor) == ("2", "admin")
    assert pin.before is not None and pin.before["default_version"] == "1"
    assert pin.after is not None and pin.after["default_version"] == "2"
    assert pin.at is not None and pin.at.utcoffset() is not None
    first = [e for e in events if e.actor == "webhook:d-7"]
    assert {e.kind for e in first} == {"model", "pin", "decision"}
    made_default = next(e for e in first if e.kind == "pin")
    assert made_default.after is not None and made_default.after["default_version"] == "1"
    assert len([e for e in first if e.kind == "decision"]) == 3
    # A refused pin wrote nothing; newest first; pages do not overlap.
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    page1 = store.events("m", limit=2)
    page2 = store.events("m", limit=2, before_id=page1[-1].id)
    assert {e.id for e in page1}.isdisjoint({e.id for e in page2})


def test_a_repeated_reconcile_logs_nothing(store: Store) -> None:
    count = len(store.events("m", limit=500))
    registry = Registry({"1": sig("prompt"), "2": sig("prompt"), "3": sig("text")})
    Reconciler(store, registry, ENV, write_back=False).reconcile("m")
    assert len(store.events("m", limit=500)) == count

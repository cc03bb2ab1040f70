"""A pass over reads equal to those of the model's last pass that found nothing to do stops
before the record (``controller/unchanged.py``), and only then: what only the full pass sees
(a tag on an older version, a deleted version, an alias moved, a model tag), a record written
since, an artifact that cannot be read, a model gone, each still gets its decision. A registry
seam (``FakeRegistry``) and a real migrated store that counts its loads and transactions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.artifacts import ArtifactFacts
from controller.database import make_engine, migrate
from controller.exceptions import GenerationConflict
from controller.reconciler import Outcome, Reconciler
from controller.records import ModelRecord
from controller.registry import ObservedModel
from controller.registry_sync import POLICY_TAG, STATE_TAG
from controller.store import Store
from controller.unchanged import reads_digest
from tests.unit.test_controller_reconciler import ENV, FakeRegistry, sig
from wire.routing_table import VersionState


class CountingStore(Store):
    """The real store, counting the record loads and write transactions of the passes."""

    loads = 0
    updates = 0

    def load_model(self, name: str) -> ModelRecord | None:
        self.loads += 1
        return super().load_model(name)

    def update_model(self, name: str, change: Callable[[ModelRecord | None], ModelRecord | None],
                     actor: str = "controller") -> ModelRecord | None:
        self.updates += 1
        return super().update_model(name, change, actor)


@pytest.fixture()
def store(tmp_path: Path) -> CountingStore:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    return CountingStore(engine)


def settled(store: CountingStore, registry: FakeRegistry) -> Reconciler:
    """A reconciler whose passes over ``m`` (two versions) found nothing to do, the verdict
    written back as the worker's lane writes it."""
    registry.versions_ = {"1": ("models:/m-1", sig("text")), "2": ("models:/m-2", sig("text"))}
    reconciler = Reconciler(store, registry, ENV)
    for _ in range(3):  # decided; the write-back acknowledged; found nothing to do
        outcome = reconciler.reconcile("m")
        assert outcome.write_back is not None
        outcome.write_back()
    assert not reconciler.reconcile("m").changed
    store.loads = store.updates = 0
    return reconciler


def passed(reconciler: Reconciler, store: CountingStore) -> tuple[Outcome, int, int]:
    store.loads = store.updates = 0
    outcome = reconciler.reconcile("m")
    return outcome, store.loads, store.updates


def test_a_pass_over_the_same_reads_stops_before_the_record(store: CountingStore) -> None:
    registry = FakeRegistry()
    reconciler = settled(store, registry)
    outcome, loads, updates = passed(reconciler, store)
    assert (outcome.changed, outcome.retry_reason, outcome.registry_behind) == (False, None, False)
    assert (loads, updates) == (0, 0)
    assert outcome.write_back is not None  # an event's pass still hands it to the lane
    assert set(outcome.registered_at) <= {"1", "2"}
    # Asked again and again (the full pass every 600 s): still nothing loaded or written.
    assert passed(reconciler, store)[1:] == (0, 0)


def test_a_verdict_tag_written_over_on_an_older_version_is_put_back(
    store: CountingStore,
) -> None:
    registry = FakeRegistry()
    reconciler = settled(store, registry)
    # No listing shows it (not the newest version) and its webhook was lost: the full pass.
    registry.tags["1"][STATE_TAG] = "quarantined"
    outcome, loads, updates = passed(reconciler, store)
    assert outcome.registry_behind and not outcome.changed
    assert (loads, updates) == (1, 0)  # the record loaded; the decision the same: no write
    assert outcome.write_back is not None
    outcome.write_back()
    assert registry.tags["1"][STATE_TAG] == "live"


def test_a_deleted_version_is_dropped(store: CountingStore) -> None:
    registry = FakeRegistry()
    reconciler = settled(store, registry)
    del registry.versions_["1"]
    outcome, _, updates = passed(reconciler, store)
    assert outcome.changed and updates == 1
    after = store.load_model("m")
    assert after is not None and set(after.versions) == {"2"}


def test_an_alias_moved_by_a_person_is_taken_as_a_pin(store: CountingStore) -> None:
    registry = FakeRegistry()
    reconciler = settled(store, registry)
    assert registry.aliases["serving"] == "1"
    registry.aliases["serving"] = "2"
    outcome, _, _ = passed(reconciler, store)
    after = store.load_model("m")
    assert outcome.changed and after is not None and after.default_version == "2"


def test_a_model_tag_sets_the_policy(store: CountingStore) -> None:
    registry = FakeRegistry()
    reconciler = settled(store, registry)
    registry.model_tags[POLICY_TAG] = "exact"
    outcome, _, _ = passed(reconciler, store)
    after = store.load_model("m")
    assert outcome.changed and after is not None and after.policy == "exact"


def test_a_record_written_since_is_decided_again(store: CountingStore) -> None:
    registry = FakeRegistry()
    reconciler = settled(store, registry)

    def quarantine(current: ModelRecord | None) -> ModelRecord | None:
        assert current is not None
        override = {"action": "quarantine", "reason": "r", "actor": "admin", "at": "now"}
        v2 = replace(current.versions["2"], override=override)
        return replace(current, versions={**current.versions, "2": v2})

    # An admin's change (its own decision aside): the registry reads the same.
    store.update_model("m", quarantine, "admin")
    outcome, loads, updates = passed(reconciler, store)
    assert outcome.changed and (loads, updates) == (1, 1)
    after = store.load_model("m")
    assert after is not None and after.versions["2"].state is VersionState.QUARANTINED


def test_a_version_whose_artifact_cannot_be_read_is_read_at_every_pass(
    store: CountingStore,
) -> None:
    class Broken(FakeRegistry):
        def artifact(self, name: str, version: str) -> ArtifactFacts:
            if version == "2":
                self.reads.append(version)
                raise ValueError("not an MLmodel")
            return super().artifact(name, version)

    registry = Broken()
    registry.versions_ = {"1": ("models:/m-1", sig("text")), "2": ("models:/m-2", sig("text"))}
    reconciler = Reconciler(store, registry, ENV)
    for _ in range(4):
        reconciler.reconcile("m")
    # Quarantined as unreadable, and read again each time (the artifact may be mended).
    assert registry.reads.count("2") == 4
    after = store.load_model("m")
    assert after is not None and after.versions["2"].state is VersionState.QUARANTINED


def test_a_model_gone_becomes_a_tombstone(store: CountingStore) -> None:
    registry = FakeRegistry()
    reconciler = settled(store, registry)
    registry.exists = False
    outcome, _, _ = passed(reconciler, store)
    after = store.load_model("m")
    assert outcome.changed and after is not None and after.deleted_at is not None


class WrittenMeanwhile(FakeRegistry):
    """The registry, running ``during`` (a write to the store) once, as the model is read."""

    during: Callable[[], Any] | None = None

    def model(self, name: str) -> ObservedModel:
        if self.during is not None:
            self.during()
            self.during = None
        return super().model(name)


def test_a_write_while_the_registry_is_read_is_not_decided_over(store: CountingStore) -> None:
    """The stamp is taken before the registry is read, as the record was: a write that
    commits between the two makes the pass read again, never write over it."""

    registry = WrittenMeanwhile()
    reconciler = settled(store, registry)
    registry.model_tags[POLICY_TAG] = "exact"  # the reads move: the record is needed
    registry.during = lambda: store.update_model(
        "m", lambda current: current and replace(current, policy="none"), "admin"
    )
    with pytest.raises(GenerationConflict):
        reconciler.reconcile("m")
    reconciler.reconcile("m")  # the worker's retry: read again, decided
    after = store.load_model("m")
    assert after is not None and after.policy == "exact"


def test_the_digest_tells_every_field_of_the_reads_apart() -> None:
    from controller.registry import ObservedVersion

    model = ObservedModel(1, {"serving": "1"}, {"t": "v"})
    version = ObservedVersion("1", "READY", "models:/m-1", {"k": "v"}, 5)
    base = reads_digest(model, [version])
    assert reads_digest(model, [version]) == base
    others = [
        (ObservedModel(2, {"serving": "1"}, {"t": "v"}), [version]),
        (ObservedModel(1, {"serving": "2"}, {"t": "v"}), [version]),
        (ObservedModel(1, {"serving": "1"}, {"t": "w"}), [version]),
        (model, []),
        (model, [ObservedVersion("1", "PENDING_REGISTRATION", "models:/m-1", {"k": "v"}, 5)]),
        (model, [ObservedVersion("1", "READY", "models:/m-9", {"k": "v"}, 5)]),
        (model, [ObservedVersion("1", "READY", "models:/m-1", {"k": "w"}, 5)]),
        (model, [ObservedVersion("1", "READY", "models:/m-1", {"k": "v"}, 6)]),
        # A tag's key and value are not run together.
        (model, [ObservedVersion("1", "READY", "models:/m-1", {"k:v": ""}, 5)]),
    ]
    assert len({base, *(reads_digest(m, v) for m, v in others)}) == len(others) + 1
    # The registry's order of versions is not a change.
    two = [version, ObservedVersion("2", "READY", "models:/m-2", {}, 6)]
    assert reads_digest(model, two) == reads_digest(model, two[::-1])


def test_a_pass_that_decides_nothing_new_opens_no_write_transaction(
    store: CountingStore,
) -> None:
    registry = FakeRegistry()
    settled(store, registry)
    fresh = Reconciler(store, registry, ENV)  # nothing kept: a first pass after a start
    outcome, loads, updates = passed(fresh, store)
    assert not outcome.changed and (loads, updates) == (1, 0)


def test_a_write_after_the_record_was_loaded_is_not_passed_over(store: CountingStore) -> None:
    """A pass that would change nothing of the record it loaded checks, after deciding, that
    nobody wrote it since: one written meanwhile goes to the write transaction, which refuses
    a decision from the older read."""

    registry = WrittenMeanwhile()
    settled(store, registry)
    fresh = Reconciler(store, registry, ENV)
    registry.during = lambda: store.update_model(
        "m", lambda current: current and replace(current, policy="none"), "admin"
    )
    with pytest.raises(GenerationConflict):
        fresh.reconcile("m")

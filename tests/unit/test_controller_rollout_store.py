"""The rollout state on real databases made by the migrations (SQLite and PostgreSQL): one
running rollout per model, steps and ends that take effect once however often they are tried,
and replicas' totals kept latest-per-replica and summed."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

import controller.rollout_schema  # noqa: F401  (the rollout tables on Base.metadata)
from controller.database import make_engine, migrate
from controller.exceptions import NotFound
from controller.records import ModelRecord, VersionRecord
from controller.rollout_gates import Thresholds, Totals
from controller.rollout_rows import PROMOTED, ROLLED_BACK
from controller.rollout_schema import RolloutCountsRow
from controller.rollout_store import RolloutRefused, RolloutSpec, RolloutStore
from controller.store import Store
from wire.rollout_report import LATENCY_BUCKETS_MS, RolloutReport, VersionCounts
from wire.routing_table import VersionState

SIG = {"inputs": json.dumps([{"type": "string", "name": "prompt", "required": True}]),
       "outputs": None, "params": None}  # fmt: skip
SPEC = RolloutSpec("2", [0.05, 0.5, 1.0], 600.0, 100, 0.0, Thresholds())


@pytest.fixture()
def stores(database_url: str) -> tuple[Store, RolloutStore]:
    engine = make_engine(database_url)
    migrate(engine)
    store = Store(engine)
    states = {"1": VersionState.LIVE, "2": VersionState.LIVE, "3": VersionState.QUARANTINED}
    model = ModelRecord(
        name="m", policy="exact", default_version="1", contract=SIG,
        versions={v: VersionRecord(version=v, state=s, signature=SIG, signature_read=True,
                                   decided_at=datetime(2026, 1, 1, tzinfo=UTC))
                  for v, s in states.items()},
    )  # fmt: skip
    store.update_model("m", lambda _: model)
    return store, RolloutStore(engine)


def counts(requests: int, errors: int = 0) -> VersionCounts:
    latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    latency[2] = requests
    return VersionCounts(requests=requests, errors=errors, latency_ms=latency)


def report(rollout_id: str, candidate: int, default: int, model: str = "m") -> RolloutReport:
    return RolloutReport(model=model, rollout_id=rollout_id,
                         versions={"2": counts(candidate, 1), "1": counts(default)})  # fmt: skip


def test_a_rollout_starts_once_per_model(stores: tuple[Store, RolloutStore]) -> None:
    store, rollouts = stores
    started = rollouts.start("m", SPEC, "admin")
    assert (started.candidate, started.default_version, started.weight) == ("2", "1", 0.05)
    with pytest.raises(RolloutRefused) as refused:
        rollouts.start("m", SPEC, "admin")
    assert refused.value.field == "model" and "already running" in refused.value.reason
    assert [r.id for r in rollouts.running()] == [started.id]
    events = store.events("m", limit=5)
    assert events[0].kind == "rollout" and events[0].actor == "admin"
    assert events[0].after is not None and events[0].after["rollout"] == started.id


def test_only_a_live_version_other_than_the_default_is_rolled_out(
    stores: tuple[Store, RolloutStore],
) -> None:
    _, rollouts = stores
    for version, field in (("3", "candidate"), ("1", "candidate")):
        with pytest.raises(RolloutRefused) as refused:
            rollouts.start("m", replace(SPEC, candidate=version), "admin")
        assert refused.value.field == field
    with pytest.raises(NotFound):
        rollouts.start("m", replace(SPEC, candidate="9"), "admin")
    with pytest.raises(NotFound):
        rollouts.start("nobody", SPEC, "admin")
    assert rollouts.running() == []


def test_a_step_or_an_end_happens_once_however_often_it_is_tried(
    stores: tuple[Store, RolloutStore],
) -> None:
    _, rollouts = stores
    r = rollouts.start("m", SPEC, "admin")
    assert rollouts.advance(r, Totals(), {"step": 0}, "rollout")
    assert not rollouts.advance(r, Totals(), {"step": 0}, "rollout")  # read before the move
    moved = rollouts.latest("m")
    assert moved is not None and (moved.step, moved.weight) == (1, 0.5)
    assert moved.history == [{"step": 0}]
    assert rollouts.end(moved, ROLLED_BACK, "errors", "rollout")
    assert not rollouts.end(moved, PROMOTED, "late", "rollout")
    ended = rollouts.latest("m")
    assert ended is not None and (ended.state, ended.reason, ended.weight) == (
        ROLLED_BACK, "errors", 0.0)  # fmt: skip
    assert rollouts.running() == []
    rollouts.start("m", SPEC, "admin")  # the model is free for the next one


def test_replica_totals_are_kept_latest_per_replica_and_summed(
    stores: tuple[Store, RolloutStore],
) -> None:
    _, rollouts = stores
    r = rollouts.start("m", SPEC, "admin")
    assert rollouts.record_counts("a", [report(r.id, 5, 50)]) == {"recorded": 1, "unknown": 0}
    rollouts.record_counts("a", [report(r.id, 8, 80)])  # totals: replaces, never adds
    rollouts.record_counts("a", [report(r.id, 8, 80)])  # a repeat changes nothing
    rollouts.record_counts("b", [report(r.id, 2, 20)])
    total = rollouts.totals(r)
    assert (total.candidate.requests, total.default.requests) == (10, 100)
    assert total.candidate.errors == 2 and rollouts.replicas(r) == 2
    elsewhere = [report("0" * 32, 1, 1), report(r.id, 1, 1, model="other")]
    assert rollouts.record_counts("a", elsewhere) == {"recorded": 0, "unknown": 2}
    rollouts.end(r, ROLLED_BACK, "why", "admin")
    assert rollouts.record_counts("a", [report(r.id, 9, 90)]) == {"recorded": 0, "unknown": 1}
    assert rollouts.totals(r) == Totals()


def test_counts_of_rollouts_not_running_are_pruned(stores: tuple[Store, RolloutStore]) -> None:
    _, rollouts = stores
    r = rollouts.start("m", SPEC, "admin")
    rollouts.record_counts("a", [report(r.id, 5, 50)])
    assert rollouts.prune_counts() == 0  # running: kept
    rollouts.end(r, ROLLED_BACK, "why", "admin")
    # A report checked against the running rollout that commits after its end: left behind.
    with rollouts._transaction() as session:
        session.add(RolloutCountsRow(rollout_id=r.id, replica_id="late", versions={},
                                     shadow=None, reported_at=datetime.now(UTC)))  # fmt: skip
    assert rollouts.prune_counts() == 1 and rollouts.replicas(r) == 0

"""The stepper on a real store (SQLite and PostgreSQL) and an injected clock: steps wait for
their hold time *and* their requests, gates that pass step and then promote (the pin moves, by
the actor ``rollout``), a gate that fails rolls back at once, and a rollout whose ground moves
(a pin by hand, a quarantine) ends. Counts arrive as replicas send them: totals per replica."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from controller import commands, rollout_stepper
from controller.database import make_engine, migrate
from controller.reconciler import Reconciler
from controller.rollout_gates import Thresholds
from controller.rollout_metrics import RolloutMetrics
from controller.rollout_rows import ABORTED, ENDED, PROMOTED, ROLLED_BACK
from controller.rollout_stepper import RolloutStepper
from controller.rollout_store import RolloutSpec, RolloutStore
from controller.store import Store
from tests.unit.test_controller_audit_and_overrides import ENV, Registry, sig
from wire.rollout_report import LATENCY_BUCKETS_MS, RolloutReport, ShadowCounts, VersionCounts

HOLD = 600.0


class Clock:
    """The real time moved on by hand (steps start at the store's own time)."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead

    def pass_(self, seconds: float) -> None:
        self.ahead += timedelta(seconds=seconds)


class Harness:
    def __init__(self, database_url: str) -> None:
        engine = make_engine(database_url)
        migrate(engine)
        self.store = Store(engine)
        registry = Registry({"1": sig("p"), "2": sig("p")})
        Reconciler(self.store, registry, ENV, write_back=False).reconcile("m", "resync")
        self.rollouts = RolloutStore(engine)
        self.clock = Clock()
        self.metrics = RolloutMetrics.create(CollectorRegistry())
        self.published: list[str] = []
        self.effects: list[str] = []

        async def publish(name: str, why: str) -> bool:
            self.published.append(f"{name}:{why}")
            return True

        self.stepper = RolloutStepper(
            self.rollouts, self.store, ENV, self.metrics, publish=publish, clock=self.clock,
            effects=lambda r, what: self.effects.append(what),
        )  # fmt: skip
        # Each replica's totals so far: (candidate requests, errors, default requests).
        self.sent: dict[str, tuple[int, int, int]] = {}

    def start(self, steps: list[float], **thresholds: float) -> str:
        spec = RolloutSpec("2", steps, HOLD, 100, 0.0, Thresholds(**thresholds))
        return self.rollouts.start("m", spec, "admin").id

    def serve(self, replica: str, candidate: int, errors: int = 0, default: int = 0) -> None:
        """``replica`` answers more requests: its totals grow, and it reports them."""
        c, e, d = self.sent.get(replica, (0, 0, 0))
        self.sent[replica] = (c + candidate, e + errors, d + default)
        c, e, d = self.sent[replica]
        r = self.rollouts.latest("m")
        assert r is not None

        def counts(n: int, errs: int) -> VersionCounts:
            latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)
            latency[3] = n
            return VersionCounts(requests=n, errors=errs, latency_ms=latency)

        versions = {"2": counts(c, e), "1": counts(d, 0)}
        report = RolloutReport(model="m", rollout_id=r.id, versions=versions)
        self.rollouts.record_counts(replica, [report])

    def tick(self) -> list[str]:
        return asyncio.run(self.stepper.tick())

    def default(self) -> str | None:
        m = self.store.load_model("m")
        assert m is not None
        return m.default_version


@pytest.fixture()
def h(database_url: str) -> Harness:
    return Harness(database_url)


def test_a_step_waits_for_its_hold_time_and_its_requests(h: Harness) -> None:
    h.start([0.1, 1.0])
    h.serve("a", 150, default=1350)
    assert h.tick() == []  # requests enough, time not
    h.clock.pass_(HOLD)
    assert h.tick() == ["m: step 1"]
    r = h.rollouts.latest("m")
    assert r is not None and (r.step, r.weight) == (1, 1.0)
    assert [g["outcome"] for g in r.history[0]["gates"]] == ["passed", "not-judged"]
    h.clock.pass_(HOLD)
    h.serve("a", 99)  # the new step's window starts at the totals it began with
    assert h.tick() == []
    assert h.default() == "1" and h.published == ["m:rollout"]


def test_a_candidate_like_the_default_is_promoted_through_every_step(h: Harness) -> None:
    h.start([0.05, 0.5, 1.0])
    for expected in ("step 1", "step 2", "promoted"):
        h.serve("a", 60, default=500)
        h.serve("b", 60, default=500)  # two replicas, summed
        h.clock.pass_(HOLD)
        assert h.tick() == [f"m: {expected}"]
    assert h.default() == "2"
    r = h.rollouts.latest("m")
    assert r is not None and r.state == PROMOTED and len(r.history) == 3
    pins = [e for e in h.store.events("m", limit=50) if e.kind == "pin"]
    assert pins[0].actor == "rollout" and pins[0].after is not None
    assert pins[0].after["default_version"] == "2"
    assert h.effects == ["step", "step", PROMOTED]
    log = [e.after for e in h.store.events("m", limit=50) if e.kind == "rollout"]
    assert [a["state"] for a in log if a] == [PROMOTED, "running", "running", "running"]
    assert log[0] is not None and log[0]["gates"][0].startswith("errors passed: candidate 0.00%")
    assert h.tick() == []  # nothing runs; safe to repeat


def test_a_failing_candidate_rolls_back_early_and_the_default_never_changes(h: Harness) -> None:
    h.start([0.05, 1.0])
    h.serve("a", 30, errors=9, default=600)
    assert h.tick() == []  # 30% of 30: too few to say before the step's end
    h.serve("a", 20, errors=6, default=400)
    assert h.tick() == ["m: rolled-back"]  # 30% of 50, no waiting for the hold time
    r = h.rollouts.latest("m")
    assert r is not None and r.state == ROLLED_BACK and r.weight == 0
    assert r.reason is not None and r.reason.startswith("errors:")
    assert h.default() == "1"
    m = h.store.load_model("m")
    assert m is not None and m.versions["2"].state.value == "live"  # live by header still
    assert h.metrics.ended.labels(ROLLED_BACK, "errors")._value.get() == 1


def test_a_gate_failing_at_the_steps_end_rolls_back(h: Harness) -> None:
    h.start([0.5, 1.0])
    h.serve("a", 200, errors=5, default=200)  # 2.5% against 0% + 1 point: not early (+5)
    h.clock.pass_(HOLD)
    assert h.tick() == ["m: rolled-back"]
    assert h.default() == "1"


def test_a_pin_by_hand_or_a_quarantine_ends_the_rollout(h: Harness) -> None:
    h.start([0.5, 1.0])
    commands.quarantine(h.store, "m", "2", "bad answers", ENV)
    assert h.tick() == ["m: ended"]
    r = h.rollouts.latest("m")
    assert r is not None and r.state == ENDED and r.reason is not None
    assert r.reason.startswith("candidate-not-live")
    commands.remove_override(h.store, "m", "2", ENV)
    h.start([0.5, 1.0])
    Reconciler(h.store, Registry({"1": sig("p"), "2": sig("p"), "3": sig("p")}), ENV,
               write_back=False).reconcile("m", "resync")  # fmt: skip
    commands.pin_default(h.store, "m", "3", ENV)
    assert h.tick() == ["m: ended"]
    r = h.rollouts.latest("m")
    assert r is not None and r.reason is not None and r.reason.startswith("default-changed")


def test_an_idle_tick_reads_the_running_rollouts_once(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    running = h.rollouts.running
    monkeypatch.setattr(h.rollouts, "running", lambda: reads.append(1) or running())

    def weight() -> float | None:
        return next((s.value for s in h.metrics.weight.collect()[0].samples
                     if s.labels.get("model") == "m"), None)  # fmt: skip

    assert h.tick() == [] and len(reads) == 1
    h.start([0.5, 1.0])
    reads.clear()
    assert h.tick() == [] and len(reads) == 1 and weight() == 0.5  # held: nothing to do
    commands.quarantine(h.store, "m", "2", "bad answers", ENV)
    reads.clear()
    # A tick that ended it reads again: the gauge drops the model at once.
    assert h.tick() == ["m: ended"] and len(reads) == 2 and weight() is None


def test_a_promotion_leaves_a_pin_made_meanwhile_and_an_ended_rollout_alone(h: Harness) -> None:
    # The promotion read the rollout before an operator pinned 3 (or aborted): theirs stands.
    h.start([1.0])
    r = h.rollouts.latest("m")
    assert r is not None
    Reconciler(h.store, Registry({"1": sig("p"), "2": sig("p"), "3": sig("p")}), ENV,
               write_back=False).reconcile("m", "resync")  # fmt: skip
    commands.pin_default(h.store, "m", "3", ENV)
    assert h.stepper.promote(r, "by-hand", "promoted by admin", "admin") == ENDED
    assert h.default() == "3"
    h.start([1.0])
    r = h.rollouts.latest("m")
    assert r is not None
    assert h.stepper.end(r, ABORTED, "by-hand", "aborted by admin", actor="admin") == ABORTED
    assert h.stepper.promote(r, "by-hand", "promoted by admin", "admin") is None
    assert h.default() == "3"


def test_a_silent_replica_set_never_promotes(h: Harness) -> None:
    h.start([1.0])
    h.clock.pass_(HOLD * 100)
    assert h.tick() == []
    assert h.default() == "1"


def test_one_rollout_failing_its_tick_holds_no_other_up(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    Reconciler(h.store, Registry({"1": sig("p"), "2": sig("p")}), ENV, write_back=False
               ).reconcile("n", "resync")  # fmt: skip
    h.start([1.0])
    h.rollouts.start("n", RolloutSpec("2", [1.0], HOLD, 0, 0.0, Thresholds()), "admin")
    h.clock.pass_(HOLD)
    load = h.store.load_model

    def broken(name: str) -> Any:
        if name == "m":
            raise RuntimeError("the database is busy")
        return load(name)

    monkeypatch.setattr(h.store, "load_model", broken)
    assert h.tick() == ["n: promoted"]


def test_a_promotion_is_the_pin_an_operator_makes_by_the_actor_rollout(h: Harness) -> None:
    # commands.pin_default takes the actor; the stepper's promotion is that pin.
    h.start([1.0])
    commands.pin_default(h.store, "m", "2", ENV, actor="someone")
    pins = [e for e in h.store.events("m", limit=50) if e.kind == "pin"]
    assert pins[0].actor == "someone"
    commands.pin_default(h.store, "m", "1", ENV)
    assert next(e for e in h.store.events("m", limit=50) if e.kind == "pin").actor == "admin"


def test_of_an_abort_and_a_promotion_racing_exactly_one_wins(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The abort lands while the promotion pins (after any re-read of the rollout): it either
    finds the rollout promoted and changes nothing, or the promotion pins nothing."""
    h.start([1.0])
    r = h.rollouts.latest("m")
    assert r is not None
    check = commands.check
    aborts: list[threading.Thread] = []
    aborted: list[str | None] = []

    def abort_meanwhile(*args: Any, **kwargs: Any) -> Any:
        if not aborts:
            stepper = h.stepper
            abort = threading.Thread(
                target=lambda: aborted.append(
                    stepper.end(r, ABORTED, "by-hand", "aborted by admin", actor="admin")
                )
            )
            aborts.append(abort)
            abort.start()
            # Room for the abort to commit, unless the promotion holds the rollout's row.
            abort.join(0.5)
        return check(*args, **kwargs)

    monkeypatch.setattr(commands, "check", abort_meanwhile)
    # Where the promotion pinned by a copy of the pin (before it was commands.pin_default).
    monkeypatch.setattr(rollout_stepper, "check", abort_meanwhile, raising=False)
    promoted = h.stepper.promote(r, "by-hand", "promoted by admin", "rollout")
    aborts[0].join()
    latest = h.rollouts.latest("m")
    assert latest is not None
    if promoted == PROMOTED:
        assert (latest.state, h.default(), aborted) == (PROMOTED, "2", [None])
    else:
        assert (promoted, latest.state, h.default(), aborted) == (None, ABORTED, "1", [ABORTED])


def test_with_a_shadow_a_step_waits_until_enough_shadows_ran(h: Harness) -> None:
    """Shadows give way to clients, so a busy replica runs few: 1 disagreement in 20 runs is
    95% agreement, too few runs to judge against 0.99, and the step must not pass on it."""
    spec = RolloutSpec("2", [0.1, 1.0], HOLD, 100, 0.2, Thresholds())
    rid = h.rollouts.start("m", spec, "admin").id

    def shadows(compared: int, agreed: int) -> None:
        latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        latency[3] = 150
        versions = {"2": VersionCounts(requests=150, latency_ms=latency),
                    "1": VersionCounts(requests=1350, latency_ms=latency)}  # fmt: skip
        report = RolloutReport(model="m", rollout_id=rid, versions=versions,
                               shadow=ShadowCounts(compared=compared, agreed=agreed))  # fmt: skip
        h.rollouts.record_counts("a", [report])

    shadows(20, 19)
    h.clock.pass_(HOLD)
    assert h.tick() == []  # held: the agreement gate cannot say yet
    r = h.rollouts.latest("m")
    assert r is not None and (r.step, r.state) == (0, "running")
    shadows(100, 98)  # totals: 98% of 100 runs agreed
    assert h.tick() == ["m: rolled-back"]
    assert h.default() == "1"

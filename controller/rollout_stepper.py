"""The stepper: the leader's periodic look at every running rollout (docs/architecture.md,
"Rollouts").

Reconcile-style: each tick reads the rollouts and the models afresh and does what they call
for, and every action is a conditional write on what was read (``controller.rollout_store``), so
a tick repeated, or run by two controllers during a takeover, takes each step once. For each
running rollout, in order:

1. It ends (``ended``) when what it was started against is gone: the model, the candidate's
   live state (quarantined, deleted), the default (someone pinned another version, a forced pin
   included) or the contract. A default that is now the candidate is a promotion made.
2. It rolls back at once when the candidate fails early (``rollout_gates.fails_early``).
3. When the step's hold time has passed and its window holds ``min_requests``, the gates are
   judged: one failure rolls back; all passing take the next step, or after the last one
   promote: the default moves to the candidate by the actor ``rollout``, audited, as a pin
   (``commands.pin_default``), in the transaction that ends the rollout as promoted
   (``controller.rollout_claim``: of an abort and a promotion racing, one wins).

A replica that stops reporting adds no requests, so a step without enough requests waits; the
stepper never promotes on silence. Each change is published before the tick moves on.

Each tick also starts the rollouts the model tag ``sigserve.rollout`` asks for, of versions the
last tables made live (``controller.rollout_auto``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from controller import commands
from controller.environment import ServingEnvironment
from controller.exceptions import ControllerError, InvalidRequest, NotFound, PinRefused
from controller.records import ModelRecord
from controller.rollout_auto import ACTOR as TAG_ACTOR
from controller.rollout_auto import TAG, NewVersions, PolicyError, parse_policy
from controller.rollout_claim import ClaimLost, claimed, promotion
from controller.rollout_gates import Gate, Totals, failed, fails_early, judge
from controller.rollout_metrics import RolloutMetrics
from controller.rollout_rows import ABORTED, ENDED, PROMOTED, ROLLED_BACK, RolloutRecord
from controller.rollout_store import RolloutRefused, RolloutStore, contract_digest
from controller.store import Store
from wire.routing_table import VersionState

log = logging.getLogger(__name__)
ACTOR = "rollout"
# Ticks between two prunes of counts left by ended rollouts (a race of a report with an end).
PRUNE_EVERY = 60

# Told of each change after it is stored (the MLflow alias and tags): (rollout, what happened).
Effects = Callable[[RolloutRecord, str], None]


def why_it_ends(r: RolloutRecord, model: ModelRecord | None) -> tuple[str, str, str] | None:
    """(state, reason code, detail) when the rollout's ground is gone; None while it holds."""
    if model is None or model.deleted_at is not None:
        return ENDED, "model-gone", "the model was deleted from the registry"
    if model.default_version == r.candidate:
        return PROMOTED, "by-hand", f"version {r.candidate} is the default now"
    if model.default_version != r.default_version:
        return (
            ENDED,
            "default-changed",
            (f"the default moved from {r.default_version} to {model.default_version}"),
        )
    if contract_digest(model.contract) != r.contract_digest:
        return ENDED, "contract-changed", "the model's contract changed"
    candidate = model.versions.get(r.candidate)
    if candidate is None or candidate.state is not VersionState.LIVE:
        state = candidate.state.value if candidate is not None else "gone"
        return ENDED, "candidate-not-live", f"version {r.candidate} is {state}"
    return None


def step_summary(r: RolloutRecord, window: Totals, gates: list[Gate]) -> dict[str, Any]:
    return {
        "step": r.step,
        "weight": r.steps[r.step],
        "started_at": r.step_started_at.isoformat(timespec="seconds"),
        "ended_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "window": window.to_json(),
        "gates": [g.to_json() for g in gates],
    }


class RolloutStepper:
    def __init__(
        self,
        rollouts: RolloutStore,
        store: Store,
        env: ServingEnvironment,
        metrics: RolloutMetrics,
        *,
        publish: Callable[[str, str], Awaitable[bool]],
        effects: Effects | None = None,
        new_versions: NewVersions | None = None,
        read_tags: Callable[[str], dict[str, str]] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        interval_s: float = 1.0,
    ) -> None:
        self._rollouts = rollouts
        self._store = store
        self._env = env
        self._metrics = metrics
        self._publish = publish
        self._effects = effects
        self.new_versions = new_versions
        self._read_tags = read_tags
        self.clock = clock
        self._interval_s = interval_s
        self._weighted: set[str] = set()
        self._ticks = 0

    @property
    def reads_tags(self) -> bool:
        """Whether the ``sigserve.rollout`` tag starts rollouts here."""
        return self._read_tags is not None and self.new_versions is not None

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("a rollout tick failed; the next one tries again")
            await asyncio.sleep(self._interval_s)

    async def tick(self) -> list[str]:
        """One look at every running rollout; what it did (``model: action``)."""
        done = []
        running = await asyncio.to_thread(self._rollouts.running)
        for r in running:
            try:
                action = await asyncio.to_thread(self._step, r)
            except Exception:
                # One rollout's trouble (its model's row locked past the busy timeout, say)
                # must not hold the others up; the next tick tries it again.
                log.exception("rollout of %s v%s: this tick failed", r.model, r.candidate)
                continue
            if action is not None:
                done.append(f"{r.model}: {action}")
                await self._publish(r.model, ACTOR)
        for name, version in self.new_versions.take() if self.new_versions else []:
            if await asyncio.to_thread(self._by_tag, name, version) is not None:
                done.append(f"{name}: started {version} by tag")
                await self._publish(name, TAG_ACTOR)
        # The gauge from the rollouts this tick read, unless it changed one: an idle tick
        # (most of them) reads the database once, not twice.
        self._gauge(await asyncio.to_thread(self._rollouts.running) if done else running)
        self._ticks += 1
        if self._ticks % PRUNE_EVERY == 0:
            await asyncio.to_thread(self._rollouts.prune_counts)
        return done

    def _gauge(self, running: list[RolloutRecord]) -> None:
        now = {r.model: r.weight for r in running}
        for model in self._weighted - set(now):
            self._metrics.weight.remove(model)
        for model, weight in now.items():
            self._metrics.weight.labels(model).set(weight)
        self._weighted = set(now)

    def _step(self, r: RolloutRecord) -> str | None:
        ending = why_it_ends(r, self._store.load_model(r.model))
        if ending is not None:
            return self.end(r, *ending, actor=ACTOR)
        totals = self._rollouts.totals(r)
        window = totals - r.step_start
        early = fails_early(window, totals, r.thresholds)
        if early is not None:
            return self._roll_back(r, window, [early])
        elapsed = (self.clock() - r.step_started_at).total_seconds()
        if elapsed < r.hold_s or window.step_requests < r.min_requests:
            return None
        gates = judge(window, totals, r.thresholds, shadow=r.shadow > 0)
        if failed(gates):
            return self._roll_back(r, window, gates)
        if any(g.name == "agreement" and g.outcome == "not-judged" for g in gates):
            # A rollout with a shadow was asked to compare answers: its step is held, as for
            # its requests, until enough shadows ran (they give way to clients, so a busy
            # replica may run few). `sigserve rollout status` shows the gate's count.
            return None
        summary = step_summary(r, window, gates)
        if not r.last_step:
            if not self._rollouts.advance(r, totals, summary, ACTOR):
                return None
            self._metrics.steps.inc()
            log.info("rollout of %s v%s: step %d passed, weight %g", r.model, r.candidate,
                     r.step, r.steps[r.step + 1])  # fmt: skip
            self.effect(replace(r, step=r.step + 1), "step")
            return f"step {r.step + 1}"
        return self.promote(r, "gates", "every step passed its gates", ACTOR, summary)

    def _by_tag(self, name: str, version: str) -> RolloutRecord | None:
        """Start the rollout the model's ``sigserve.rollout`` tag asks for, if it does, of a
        version never rolled out before (``controller.rollout_auto``)."""
        if self._read_tags is None or self._rollouts.has_rollout(name, version):
            return None
        try:
            policy = parse_policy(self._read_tags(name).get(TAG, ""))
        except PolicyError as exc:
            log.warning("%s: the %s tag is not a rollout (%s); v%s is not rolled out",
                        name, TAG, exc, version)  # fmt: skip
            return None
        except ControllerError as exc:
            log.warning("%s: its tags could not be read (%s); v%s is not rolled out by tag "
                        "(sigserve rollout starts it)", name, exc, version)  # fmt: skip
            return None
        if policy is None:
            return None
        try:
            r = self._rollouts.start(name, replace(policy, candidate=version), TAG_ACTOR)
        except (RolloutRefused, NotFound) as exc:
            log.info("%s: v%s is not rolled out by tag: %s", name, version, exc)
            return None
        self._metrics.started.inc()
        log.info("rollout of %s v%s started by its %s tag", name, version, TAG)
        self.effect(r, "started")
        return r

    def _roll_back(self, r: RolloutRecord, window: Totals, gates: list[Gate]) -> str | None:
        reasons = failed(gates)
        detail = "; ".join(f"{g.name}: {g.detail}" for g in reasons)
        summary = step_summary(r, window, gates)
        return self.end(r, ROLLED_BACK, reasons[0].name, detail, actor=ACTOR, summary=summary)

    def promote(
        self, r: RolloutRecord, code: str, detail: str, actor: str,
        summary: dict[str, Any] | None = None,
    ) -> str | None:  # fmt: skip
        """Pin the candidate (``commands.pin_default``, by ``actor``) and end the rollout as
        promoted, in one transaction; None when the rollout ended or moved on meanwhile (an
        abort, a rollback): then nothing is pinned."""
        reason = f"{code}: {detail}"
        try:
            with claimed(promotion(r, reason, actor, summary)):
                commands.pin_default(self._store, r.model, r.candidate, self._env, actor=actor)
        except ClaimLost:
            return None
        except (PinRefused, NotFound, InvalidRequest) as exc:
            return self.end(r, ENDED, "pin-refused", str(exc), actor=actor, summary=summary)
        return self._ended(r, PROMOTED, code, detail)

    def end(
        self, r: RolloutRecord, state: str, code: str, detail: str, *, actor: str,
        summary: dict[str, Any] | None = None,
    ) -> str | None:  # fmt: skip
        """End ``r``; the action taken, None when it had ended already."""
        if not self._rollouts.end(r, state, f"{code}: {detail}", actor, summary):
            return None
        return self._ended(r, state, code, detail)

    def _ended(self, r: RolloutRecord, state: str, code: str, detail: str) -> str:
        self._metrics.ended.labels(state, code).inc()
        level = logging.WARNING if state in (ROLLED_BACK, ENDED) else logging.INFO
        log.log(level, "rollout of %s v%s %s (%s: %s)", r.model, r.candidate, state, code, detail)
        self.effect(replace(r, state=state, reason=f"{code}: {detail}"), state)
        return state

    def effect(self, r: RolloutRecord, what: str) -> None:
        if self._effects is None:
            return
        try:
            self._effects(r, what)
        except Exception as exc:
            # For people reading MLflow; the state and the table are what serve, and the
            # change is stored already: it must still be published.
            log.warning("rollout of %s v%s: the registry was not told (%s)", r.model,
                        r.candidate, exc)  # fmt: skip


__all__ = ["ABORTED", "ACTOR", "RolloutStepper", "why_it_ends"]

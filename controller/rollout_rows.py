"""Rollout rows <-> records, and the rollouts under way as the routing table carries them.

``rollouts_under_way`` is read inside the store's publish transaction (``controller.store``), so
a table's content (and its digest) covers the weights: a step taken is a new revision, and a
follower rebuilding the table from the database gets the same one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.rollout_gates import Thresholds, Totals
from controller.rollout_schema import RUNNING, RolloutRow
from controller.rows import utc
from wire.routing_table import Rollout

PROMOTED, ROLLED_BACK, ABORTED, ENDED = "promoted", "rolled-back", "aborted", "ended"
STATES = (RUNNING, PROMOTED, ROLLED_BACK, ABORTED, ENDED)


@dataclass(frozen=True)
class RolloutRecord:
    id: str
    model: str
    candidate: str
    default_version: str
    contract_digest: str
    steps: list[float]
    step: int
    step_started_at: datetime
    hold_s: float
    min_requests: int
    shadow: float
    thresholds: Thresholds
    state: str
    actor: str
    created_at: datetime
    reason: str | None = None
    step_start: Totals = field(default_factory=Totals)
    history: list[dict[str, Any]] = field(default_factory=list)
    ended_at: datetime | None = None

    @property
    def weight(self) -> float:
        return self.steps[self.step] if self.state == RUNNING else 0.0

    @property
    def last_step(self) -> bool:
        return self.step == len(self.steps) - 1

    def wire(self) -> Rollout:
        t = self.thresholds
        return Rollout(
            id=self.id,
            candidate=self.candidate,
            weight=self.weight,
            shadow=self.shadow,
            step=self.step,
            rel_tol=t.rel_tol,
            abs_tol=t.abs_tol,
            min_cosine=t.min_cosine,
        )


def to_record(row: RolloutRow) -> RolloutRecord:
    started, created = utc(row.step_started_at), utc(row.created_at)
    assert started is not None and created is not None
    return RolloutRecord(
        id=row.id,
        model=row.model_name,
        candidate=row.candidate,
        default_version=row.default_version,
        contract_digest=row.contract_digest,
        steps=[float(s) for s in row.steps],
        step=row.step,
        step_started_at=started,
        hold_s=row.hold_s,
        min_requests=row.min_requests,
        shadow=row.shadow,
        thresholds=Thresholds.model_validate(row.thresholds),
        state=row.state,
        actor=row.actor,
        created_at=created,
        reason=row.reason,
        step_start=Totals.of(row.step_start_counts),
        history=list(row.history or []),
        ended_at=utc(row.ended_at),
    )


def rollouts_under_way(session: Session) -> dict[str, Rollout]:
    """The running rollouts by model name, as the routing table carries them."""
    rows = session.scalars(select(RolloutRow).where(RolloutRow.state == RUNNING)).all()
    return {row.model_name: to_record(row).wire() for row in rows}

"""The rollout state's transactions: start, step, end, and the counts replicas report.

Each public method is one transaction. Every change of a running rollout is a conditional UPDATE
on what the caller read (its state and step), so the stepper's actions are safe to repeat and two
controllers (a leader that just lost its lease and its successor) cannot both take a step: the
second finds the row moved and changes nothing. At most one rollout per model runs, which the
migration's partial unique index keeps true across controllers. Each change is audited (kind
``rollout``) in its own transaction.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from controller.exceptions import ControllerError, NotFound
from controller.rollout_gates import Thresholds, Totals, stored_report, summed
from controller.rollout_rows import RolloutRecord, to_record
from controller.rollout_schema import RUNNING, RolloutCountsRow, RolloutRow
from controller.schema import AuditEventRow, RegisteredModelRow
from wire.rollout_report import MAX_SAMPLES, RolloutReport
from wire.routing_table import VersionState

AUDIT_KIND = "rollout"


class RolloutRefused(ControllerError):
    """A rollout that cannot start or change: answered 409 naming the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass(frozen=True)
class RolloutSpec:
    candidate: str
    # Weights 0..1, increasing; the last is where the rollout promotes.
    steps: list[float]
    hold_s: float
    min_requests: int
    shadow: float
    thresholds: Thresholds


def contract_digest(contract: dict[str, Any] | None) -> str:
    return hashlib.sha256(json.dumps(contract, sort_keys=True).encode()).hexdigest()


def gate_lines(step: dict[str, Any]) -> list[str]:
    """A step's gates as the audit log keeps them: one line each (the window stays in the
    rollout's history)."""
    return [f"{g['gate']} {g['outcome']}: {g['detail']}" for g in step.get("gates", [])]


def _now() -> datetime:
    return datetime.now(UTC)


class RolloutStore:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def _audit(
        self, session: Session, r: RolloutRecord | RolloutRow, actor: str, what: dict[str, Any]
    ) -> None:
        model = r.model if isinstance(r, RolloutRecord) else r.model_name
        session.add(
            AuditEventRow(
                model_name=model,
                version=r.candidate,
                kind=AUDIT_KIND,
                actor=actor,
                at=_now(),
                before=None,
                after={"rollout": r.id, **what},
            )
        )

    def start(self, name: str, spec: RolloutSpec, actor: str) -> RolloutRecord:
        """Start a rollout of ``spec.candidate``; ``RolloutRefused`` when it cannot run."""
        try:
            return self._start(name, spec, actor)
        except IntegrityError:
            # Another controller started one for this model between our check and insert.
            raise RolloutRefused("model", f"a rollout of '{name}' is already running") from None

    def _start(self, name: str, spec: RolloutSpec, actor: str) -> RolloutRecord:
        now = _now()
        with self._transaction() as session:
            model = session.scalars(
                select(RegisteredModelRow)
                .where(RegisteredModelRow.name == name)
                .options(selectinload(RegisteredModelRow.versions))
                .with_for_update()
            ).one_or_none()
            if model is None or model.deleted_at is not None:
                raise NotFound(f"registered model '{name}' is not known to sigserve")
            versions = {v.version: v for v in model.versions}
            candidate = versions.get(spec.candidate)
            if candidate is None:
                raise NotFound(f"registered model '{name}' has no version '{spec.candidate}'")
            if candidate.state != VersionState.LIVE.value:
                raise RolloutRefused(
                    "candidate",
                    f"version {spec.candidate} is "
                    f"{candidate.state}, not live: only a live version can "
                    "take traffic",
                )
            if model.default_version is None:
                raise RolloutRefused("model", f"'{name}' has no default to roll out from")
            if model.default_version == spec.candidate:
                raise RolloutRefused(
                    "candidate", f"version {spec.candidate} is already the default"
                )
            running = self._running_row(session, name)
            if running is not None:
                raise RolloutRefused(
                    "model",
                    f"rollout {running.id} of version "
                    f"{running.candidate} is already running; abort it first",
                )
            row = RolloutRow(
                id=uuid.uuid4().hex,
                model_name=name,
                candidate=spec.candidate,
                default_version=model.default_version,
                contract_digest=contract_digest(model.contract),
                steps=list(spec.steps),
                step=0,
                step_started_at=now,
                hold_s=spec.hold_s,
                min_requests=spec.min_requests,
                shadow=spec.shadow,
                thresholds=spec.thresholds.model_dump(mode="json"),
                state=RUNNING,
                reason=None,
                step_start_counts=Totals().to_json(),
                history=[],
                actor=actor,
                created_at=now,
                ended_at=None,
            )
            session.add(row)
            session.flush()  # the unique index refuses a second running rollout here
            self._audit(
                session,
                row,
                actor,
                {
                    "state": RUNNING,
                    "step": 0,
                    "weight": spec.steps[0],
                    "shadow": spec.shadow,
                    "default_version": model.default_version,
                },
            )
            return to_record(row)

    def _running_row(self, session: Session, name: str) -> RolloutRow | None:
        query = select(RolloutRow).where(RolloutRow.model_name == name, RolloutRow.state == RUNNING)
        return session.scalars(query).one_or_none()

    def running(self) -> list[RolloutRecord]:
        with self._transaction() as session:
            rows = session.scalars(select(RolloutRow).where(RolloutRow.state == RUNNING)).all()
            return [to_record(r) for r in rows]

    def latest(self, name: str) -> RolloutRecord | None:
        """The model's running rollout, else its most recent one."""
        with self._transaction() as session:
            row = (
                self._running_row(session, name)
                or session.scalars(
                    select(RolloutRow)
                    .where(RolloutRow.model_name == name)
                    .order_by(RolloutRow.created_at.desc())
                    .limit(1)
                ).one_or_none()
            )
            return to_record(row) if row is not None else None

    def has_rollout(self, name: str, candidate: str) -> bool:
        """Whether ``candidate`` was ever rolled out on ``name`` (running or ended)."""
        with self._transaction() as session:
            query = select(RolloutRow.id).where(
                RolloutRow.model_name == name, RolloutRow.candidate == candidate
            )
            return session.execute(query.limit(1)).first() is not None

    def advance(
        self, r: RolloutRecord, now_totals: Totals, ended_step: dict[str, Any], actor: str
    ) -> bool:
        """Take ``r`` from its step to the next; False when someone moved it first."""
        now = _now()
        with self._transaction() as session:
            moved = session.execute(
                update(RolloutRow)
                .where(
                    RolloutRow.id == r.id, RolloutRow.state == RUNNING, RolloutRow.step == r.step
                )
                .values(
                    step=r.step + 1,
                    step_started_at=now,
                    step_start_counts=now_totals.to_json(),
                    history=[*r.history, ended_step],
                )
            )
            if cast(CursorResult[Any], moved).rowcount != 1:
                return False
            self._audit(
                session,
                r,
                actor,
                {
                    "state": RUNNING,
                    "step": r.step + 1,
                    "weight": r.steps[r.step + 1],
                    "gates": gate_lines(ended_step),
                },
            )
            return True

    def end(
        self,
        r: RolloutRecord,
        state: str,
        reason: str,
        actor: str,
        ended_step: dict[str, Any] | None = None,
    ) -> bool:
        """End a running rollout (promoted, rolled back, aborted, ended); False when it had
        ended already. Its counts go with it (the history keeps each step's window)."""
        now = _now()
        history = [*r.history, ended_step] if ended_step is not None else r.history
        with self._transaction() as session:
            ended = session.execute(
                update(RolloutRow)
                .where(RolloutRow.id == r.id, RolloutRow.state == RUNNING)
                .values(state=state, reason=reason, ended_at=now, history=history)
            )
            if cast(CursorResult[Any], ended).rowcount != 1:
                return False
            session.execute(delete(RolloutCountsRow).where(RolloutCountsRow.rollout_id == r.id))
            self._audit(
                session,
                r,
                actor,
                {
                    "state": state,
                    "reason": reason,
                    "step": r.step,
                    **({"gates": gate_lines(ended_step)} if ended_step else {}),
                },
            )
            return True

    def record_counts(self, replica: str, reports: list[RolloutReport]) -> dict[str, int]:
        """Keep each report as the replica's latest totals for a running rollout of its
        model; how many were ``recorded`` and how many named no running rollout (``unknown``,
        a replica that has not taken the table ending it yet)."""
        outcome = {"recorded": 0, "unknown": 0}
        if not reports:
            return outcome
        now = _now()
        with self._transaction() as session:
            ids = {rep.rollout_id for rep in reports}
            running = dict(
                session.execute(
                    select(RolloutRow.id, RolloutRow.model_name).where(
                        RolloutRow.id.in_(ids), RolloutRow.state == RUNNING
                    )
                )
                .tuples()
                .all()
            )
            rows = []
            for rep in reports:
                if running.get(rep.rollout_id) != rep.model:
                    outcome["unknown"] += 1
                    continue
                versions, shadow = stored_report(rep)
                rows.append(
                    {
                        "rollout_id": rep.rollout_id,
                        "replica_id": replica,
                        "versions": versions,
                        "shadow": shadow,
                        "reported_at": now,
                    }
                )
            # One row per rollout: a report naming a rollout twice keeps the last.
            latest = list({row["rollout_id"]: row for row in rows}.values())
            if latest:
                dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
                upsert = dialect.insert(RolloutCountsRow).values(latest)
                session.execute(
                    upsert.on_conflict_do_update(
                        index_elements=[RolloutCountsRow.rollout_id, RolloutCountsRow.replica_id],
                        set_={
                            "versions": upsert.excluded.versions,
                            "shadow": upsert.excluded.shadow,
                            "reported_at": upsert.excluded.reported_at,
                        },
                    )
                )
            outcome["recorded"] = len(rows)
        return outcome

    def prune_counts(self) -> int:
        """Remove counts of rollouts that are not running; how many. ``end`` removes a
        rollout's own, but a report checked against a running rollout may commit just after
        its end removed them (PostgreSQL's read committed): such rows are taken here."""
        running = select(RolloutRow.id).where(RolloutRow.state == RUNNING)
        with self._transaction() as session:
            gone = session.execute(
                delete(RolloutCountsRow).where(RolloutCountsRow.rollout_id.not_in(running))
            )
            return cast(CursorResult[Any], gone).rowcount

    def _reports(self, rollout_id: str) -> list[RolloutCountsRow]:
        with self._transaction() as session:
            query = select(RolloutCountsRow).where(RolloutCountsRow.rollout_id == rollout_id)
            return list(session.scalars(query.order_by(RolloutCountsRow.reported_at)).all())

    def totals(self, r: RolloutRecord) -> Totals:
        """The rollout's counts now: every replica's latest totals, summed."""
        rows = self._reports(r.id)
        return summed([(row.versions, row.shadow) for row in rows], r.candidate, r.default_version)

    def samples(self, r: RolloutRecord) -> list[dict[str, Any]]:
        """The latest disagreements the replicas sampled, newest reports last, capped."""
        found: list[dict[str, Any]] = []
        for row in self._reports(r.id):
            found.extend((row.shadow or {}).get("samples") or [])
        return found[-MAX_SAMPLES * 2 :]

    def replicas(self, r: RolloutRecord) -> int:
        return len(self._reports(r.id))

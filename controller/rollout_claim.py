"""A rollout's promotion: the candidate pinned and the rollout row claimed in one transaction.

Of an abort (or a rollback, or another controller's step) and a promotion racing, exactly one
wins: the promotion's pin (``commands.pin_default``, one ``Store.update_model`` transaction)
also moves the rollout row from running to promoted by a conditional UPDATE on its state and
step, and a claim that finds the row moved raises ``ClaimLost``, which rolls the pin back with
it. An abort is the same kind of conditional UPDATE (``RolloutStore.end``), so whichever commits
first makes the other change nothing. The claim also checks, under the model row's lock, that
the default is still the one the rollout began from: a pin an operator made meanwhile stands.

``Store.update_model`` does not hand its session to its callers, so the claim rides on the
``after_begin`` event of the session the pin opens: ``claimed`` arms it for the calls in its
block on this thread (a context variable), and the claim runs on the transaction's connection
before the store reads the model. Outside such a block the listener does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, delete, event, insert, select, update
from sqlalchemy.orm import Session, SessionTransaction

from controller.exceptions import ControllerError, NotFound, PinRefused
from controller.rollout_rows import PROMOTED, RolloutRecord
from controller.rollout_schema import RUNNING, RolloutCountsRow, RolloutRow
from controller.rollout_store import AUDIT_KIND, gate_lines
from controller.schema import AuditEventRow, RegisteredModelRow

Claim = Callable[[Connection], None]
_ARMED: ContextVar[Claim | None] = ContextVar("sigserve_rollout_claim", default=None)


class ClaimLost(ControllerError):
    """The rollout was no longer running at the step the promotion read: nothing pinned."""


@dataclass
class Claimed:
    ran: bool = False


@event.listens_for(Session, "after_begin")
def _claim_in_this_transaction(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    claim = _ARMED.get()
    if claim is not None:
        claim(connection)


@contextmanager
def claimed(claim: Claim) -> Iterator[Claimed]:
    """Run ``claim`` in the first transaction begun on this thread inside the block: the pin's
    (``update_model`` retries only the insert of a model not stored yet, never a pin's). Once
    only: a second claim, on another connection, would wait on the first's row lock."""
    outcome = Claimed()

    def run(connection: Connection) -> None:
        if outcome.ran:
            return
        claim(connection)
        outcome.ran = True

    token = _ARMED.set(run)
    try:
        yield outcome
    finally:
        _ARMED.reset(token)
    if not outcome.ran:
        raise RuntimeError("the promotion's pin ran no transaction to claim the rollout in")


def promotion(r: RolloutRecord, reason: str, actor: str, summary: dict[str, Any] | None
              ) -> Claim:  # fmt: skip
    """The claim of ``r``'s promotion, for ``claimed``."""

    def claim(connection: Connection) -> None:
        default = connection.execute(
            select(RegisteredModelRow.default_version, RegisteredModelRow.deleted_at)
            .where(RegisteredModelRow.name == r.model)
            .with_for_update()
        ).one_or_none()
        if default is None or default.deleted_at is not None:
            raise NotFound(f"registered model '{r.model}' is not known to sigserve")
        if default.default_version not in (r.default_version, r.candidate):
            raise PinRefused(
                f"the default moved to {default.default_version} during the rollout", []
            )
        now = datetime.now(UTC)
        history = [*r.history, summary] if summary is not None else r.history
        moved = connection.execute(
            update(RolloutRow)
            .where(RolloutRow.id == r.id, RolloutRow.state == RUNNING, RolloutRow.step == r.step)
            .values(state=PROMOTED, reason=reason, ended_at=now, history=history)
        )
        if cast(CursorResult[Any], moved).rowcount != 1:
            raise ClaimLost(f"rollout {r.id} of '{r.model}' moved before its promotion")
        connection.execute(delete(RolloutCountsRow).where(RolloutCountsRow.rollout_id == r.id))
        after: dict[str, Any] = {"rollout": r.id, "state": PROMOTED, "reason": reason,
                                 "step": r.step}  # fmt: skip
        if summary:
            after["gates"] = gate_lines(summary)
        connection.execute(
            insert(AuditEventRow).values(
                model_name=r.model,
                version=r.candidate,
                kind=AUDIT_KIND,
                actor=actor,
                at=now,
                before=None,
                after=after,
            )
        )

    return claim

"""SQLAlchemy mapping of the rollout state (migration ``0014``): one row per rollout, and the
latest totals each serving replica reported for it (docs/architecture.md, "Rollouts")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from controller.schema import Base

RUNNING = "running"


class RolloutRow(Base):
    __tablename__ = "rollouts"
    __table_args__ = (
        Index("ix_rollouts_model_name", "model_name"),
        # One running rollout per model, whichever controller starts it.
        Index(
            "ux_rollouts_running",
            "model_name",
            unique=True,
            sqlite_where=text("state = 'running'"),
            postgresql_where=text("state = 'running'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(256))
    candidate: Mapped[str] = mapped_column(String(32))
    # The default and the contract (its digest) when the rollout began: either changed by
    # someone else ends the rollout.
    default_version: Mapped[str] = mapped_column(String(32))
    contract_digest: Mapped[str] = mapped_column(String(64))
    # The candidate's weight at each step (0..1); a step of 0 is a shadow alone.
    steps: Mapped[list[float]] = mapped_column(JSON)
    step: Mapped[int] = mapped_column(Integer)
    step_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    hold_s: Mapped[float] = mapped_column(Float)
    min_requests: Mapped[int] = mapped_column(Integer)
    shadow: Mapped[float] = mapped_column(Float)
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSON)
    # running | promoted | rolled-back | aborted | ended
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    # The summed totals when the current step began: the step's window is now minus these.
    step_start_counts: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Each step that ended: its weight, times, window counts and gate results.
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RolloutCountsRow(Base):
    """The latest totals one replica reported for one rollout (``wire.rollout_report``)."""

    __tablename__ = "rollout_counts"

    rollout_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    replica_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    versions: Mapped[dict[str, Any]] = mapped_column(JSON)
    shadow: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

"""Rollouts (issue 19): a candidate version taking a growing share of a model's traffic, step by
step, its gates decided from the counts serving replicas report.

``rollouts`` holds one row per rollout, running or ended (the history stays readable); at most
one per model is running, which a partial unique index keeps true across controllers.
``rollout_counts`` holds the latest totals each replica reported per rollout (totals, not
deltas: a report lost or repeated changes nothing); the controller sums them over replicas.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("candidate", sa.String(32), nullable=False),
        sa.Column("default_version", sa.String(32), nullable=False),
        sa.Column("contract_digest", sa.String(64), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hold_s", sa.Float(), nullable=False),
        sa.Column("min_requests", sa.Integer(), nullable=False),
        sa.Column("shadow", sa.Float(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("step_start_counts", sa.JSON(), nullable=True),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_rollouts_model_name", "rollouts", ["model_name"])
    op.create_index(
        "ux_rollouts_running",
        "rollouts",
        ["model_name"],
        unique=True,
        sqlite_where=sa.text("state = 'running'"),
        postgresql_where=sa.text("state = 'running'"),
    )
    op.create_table(
        "rollout_counts",
        sa.Column("rollout_id", sa.String(32), primary_key=True),
        sa.Column("replica_id", sa.String(256), primary_key=True),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("shadow", sa.JSON(), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollout_counts")
    op.drop_index("ux_rollouts_running", table_name="rollouts")
    op.drop_index("ix_rollouts_model_name", table_name="rollouts")
    op.drop_table("rollouts")

"""Quarantine / release by hand (a per-version override), the audit log, and tombstones: a
model deleted from the registry keeps its contract, pin and policies for when its name returns.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("override", sa.JSON(), nullable=True))
    with op.batch_alter_table("registered_models") as batch:
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("version", sa.String(32), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
    )
    op.create_index("ix_audit_events_model_name", "audit_events", ["model_name"])
    op.create_index("ix_audit_events_at", "audit_events", ["at"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_at", "audit_events")
    op.drop_index("ix_audit_events_model_name", "audit_events")
    op.drop_table("audit_events")
    with op.batch_alter_table("registered_models") as batch:
        batch.drop_column("deleted_at")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("override")

"""Reconcile requests a follower hands to the leader (two controllers on one database).

A controller that does not lead records a verified webhook's model here, in the transaction
that records the delivery id, and the leader drains the table (``controller/leadership.py``).
One row per model: a name asked for twice before the leader took it is reconciled once.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconcile_requests",
        sa.Column("model_name", sa.String(256), primary_key=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("reconcile_requests")

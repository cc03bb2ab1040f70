"""A model's batching when served, from its registry tags ``sigserve.max_batch_size`` and
``sigserve.batch_wait_ms``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registered_models") as batch:
        batch.add_column(sa.Column("max_batch_size", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("batch_wait_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registered_models") as batch:
        batch.drop_column("batch_wait_ms")
        batch.drop_column("max_batch_size")

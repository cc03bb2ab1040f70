"""Routing-table epoch: revisions compare only within one controller database.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("table_revision") as batch:
        batch.add_column(sa.Column("epoch", sa.String(32), nullable=False, server_default=""))
    # An existing database gets its epoch now; a new one gets it with its first table.
    op.execute(
        sa.text("UPDATE table_revision SET epoch = :epoch WHERE epoch = ''").bindparams(
            epoch=uuid.uuid4().hex
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("table_revision") as batch:
        batch.drop_column("epoch")

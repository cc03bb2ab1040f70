"""A generation per registered model, so a decision made from an older read cannot commit.

Every write of a model adds one to its generation; a reconcile carries the generation it read
with its registry snapshot, and the write is a conditional UPDATE on it
(``controller/store.py``). Existing rows start at 1: a stored model always has 1 or more, and
0 stands for "not stored" in a reconcile's read.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registered_models") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("registered_models") as batch:
        batch.drop_column("generation")

"""The routing table's revision is a BIGINT.

A replica that saw a later revision makes the controller catch up above it
(``Store.catch_up``), and a revision so moved must leave room for every later publish: on
PostgreSQL an INTEGER stops at 2**31 - 1, which one unauthenticated poll could reach before
the catch-up was bounded (sigserve issue 16). SQLite's integers are 64-bit whatever the
declared type; the batch rebuild there only changes the declaration.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("table_revision") as batch:
        batch.alter_column(
            "revision", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False
        )


def downgrade() -> None:
    # A revision above 2**31 - 1 does not fit back: PostgreSQL refuses, and nothing is lost.
    with op.batch_alter_table("table_revision") as batch:
        batch.alter_column(
            "revision", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False
        )

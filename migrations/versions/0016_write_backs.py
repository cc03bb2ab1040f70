"""The write-back lane (issue 20): which model's decision reached the registry.

``write_backs`` holds, per model, the generation whose verdict tags and alias were last written
back (controller/write_back_marks.py); a model without a row, or with another generation, is
written back by the next resync. Before this release the write-back ran inside every pass, and
one that failed was tried again at the next: every model stored is taken as written back.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "write_backs",
        sa.Column("model_name", sa.String(256), primary_key=True),
        sa.Column("generation", sa.Integer(), nullable=False),
    )
    op.execute(
        "INSERT INTO write_backs (model_name, generation) "
        "SELECT name, generation FROM registered_models WHERE deleted_at IS NULL"
    )


def downgrade() -> None:
    op.drop_table("write_backs")

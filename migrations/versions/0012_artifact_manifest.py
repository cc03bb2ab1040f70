"""Every file of a checked artifact (path, size, SHA-256 up to a limit), not only its MLmodel.

A version decided before this keeps NULL: serving checks its MLmodel digest alone, as before
(docs/architecture.md, "Decisions are bound to artifacts").

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("manifest", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("manifest")

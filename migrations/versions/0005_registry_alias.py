"""The pin mirrored to a registry alias: the alias as last seen, the last move refused, and the
last write the registry refused (a warning: the decision stands).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registered_models") as batch:
        batch.add_column(sa.Column("alias_seen", sa.String(32), nullable=True))
        batch.add_column(sa.Column("alias_refusal", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("registry_warning", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registered_models") as batch:
        batch.drop_column("registry_warning")
        batch.drop_column("alias_refusal")
        batch.drop_column("alias_seen")

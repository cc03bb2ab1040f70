"""Decisions bound to artifacts: what was checked (URI, MLmodel digest, environment), warnings,
the environment policy, and the registry's creation time of each model.

Versions decided before this migration carry no digest; the reconciler reads their artifacts
again (``mlmodel_digest IS NULL`` means not read) and decides them once more.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registered_models") as batch:
        batch.add_column(
            sa.Column("environment_policy", sa.String(16), nullable=False,
                      server_default="strict")
        )
        batch.add_column(sa.Column("registry_created_at", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("artifact_uri", sa.Text(), nullable=True))
        batch.add_column(sa.Column("mlmodel_digest", sa.String(64), nullable=True))
        batch.add_column(sa.Column("environment", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("warnings", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        for column in ("warnings", "environment", "mlmodel_digest", "artifact_uri"):
            batch.drop_column(column)
    with op.batch_alter_table("registered_models") as batch:
        batch.drop_column("registry_created_at")
        batch.drop_column("environment_policy")

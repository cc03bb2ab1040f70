"""Proofs before the first request: the outcome per version (with the MLmodel digest it is
about) and the model's ``sigserve.proof`` tag.

A version live before this release was never proven; it is given a proof of outcome
``before-proofs`` for the artifact it has, so the upgrade takes no version out of service (it
stays live, with a warning that says so; controller/proofs.py). Every other version is decided
as before and, where it would go live, waits for its proof.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("proof", sa.JSON(), nullable=True))
    with op.batch_alter_table("registered_models") as batch:
        batch.add_column(sa.Column("proof_policy", sa.String(8), nullable=True))
    versions = sa.table(
        "model_versions",
        sa.column("model_name", sa.String),
        sa.column("version", sa.String),
        sa.column("state", sa.String),
        sa.column("mlmodel_digest", sa.String),
        sa.column("proof", sa.JSON),
    )
    connection = op.get_bind()
    live = connection.execute(
        sa.select(versions.c.model_name, versions.c.version, versions.c.mlmodel_digest).where(
            versions.c.state == "live", versions.c.mlmodel_digest.is_not(None)
        )
    ).all()
    for name, version, digest in live:
        connection.execute(
            versions.update()
            .where(versions.c.model_name == name, versions.c.version == version)
            .values(proof={"outcome": "before-proofs", "exercised": False,
                           "mlmodel_digest": digest})
        )  # fmt: skip


def downgrade() -> None:
    with op.batch_alter_table("registered_models") as batch:
        batch.drop_column("proof_policy")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("proof")

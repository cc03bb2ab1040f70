"""Environments of their own (issue 17): the environment a version is assigned, and the
environment policy's new values.

``model_versions.own_environment`` keeps the environment of its own a version is proven and
served in (controller/own_environments.py); NULL, the shared serving environment, which is
where every version stored before this release is. The policy values before issue 17 are
rewritten as the values they mean now (``strict`` -> ``isolate``, ``warn`` -> ``off``;
controller/environment.py says why), so the admin API shows the new value; the controller reads
the old ones as the new ones anyway, on tags and settings too. The rules' revision changed with
them, so every version is decided once more under its model's policy.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_NEW = {"strict": "isolate", "warn": "off"}


def _rewrite(mapping: dict[str, str]) -> None:
    models = sa.table("registered_models", sa.column("environment_policy", sa.String))
    connection = op.get_bind()
    for old, new in mapping.items():
        connection.execute(
            models.update().where(models.c.environment_policy == old).values(environment_policy=new)
        )


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("own_environment", sa.JSON(), nullable=True))
    _rewrite(_NEW)


def downgrade() -> None:
    # ``shared`` had no value before: ``strict`` quarantines what it cannot serve, as it does.
    # ``off`` stays ``off`` (a ``warn`` upgraded to it cannot be told from one set ``off``).
    _rewrite({"isolate": "strict", "shared": "strict"})
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("own_environment")

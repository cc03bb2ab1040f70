"""Alembic environment: runs migrations on the URL the caller put in the config."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import engine_from_config, pool

from controller.database import parse_database_url

config = context.config
url = config.attributes.get("url") or os.environ.get("SIGSERVE_DATABASE_URL")
if url:
    # The ini parser would read the %-escapes of a URL-encoded password as interpolation.
    rendered = parse_database_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section) or {},
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as conn:
        context.configure(connection=conn, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

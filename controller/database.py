"""Engine construction and migrations. Nothing here runs at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Engine, create_engine, event, make_url, text

import migrations

MIGRATIONS_DIR = Path(migrations.__file__).parent
# Controllers sharing a PostgreSQL database start together: one migrates, the others wait for it
# (a transaction-scoped advisory lock; its key differs from the leader's, controller/leadership).
MIGRATION_LOCK_KEY = 0x5349_4753_4D49_4752  # "SIGSMIGR"


def parse_database_url(url: str) -> URL:
    """``url`` parsed; a plain ``postgresql://`` (or ``postgres://``) URL gets psycopg 3.

    SQLAlchemy would pick psycopg2 for them, which sigserve does not install.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str, *, busy_timeout_s: float = 30.0) -> Engine:
    """An engine for ``url``; a statement waits ``busy_timeout_s`` for a lock, then fails."""
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_timeout_s}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets the admin API read while the worker writes; FKs make cascades real.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    parsed = parse_database_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        # PostgreSQL waits for a row lock forever by default; bounded like SQLite's busy
        # timeout, a call stuck behind another controller fails (503) instead of hanging.
        connect_args["options"] = f"-c lock_timeout={max(1, round(busy_timeout_s * 1000))}"
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def _alembic_config(engine: Engine) -> Config:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = engine.url.render_as_string(hide_password=False)
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (the latest by default); a no-op when it is there."""
    config = _alembic_config(engine)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Held until this transaction (the whole upgrade: DDL is transactional) commits.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def is_migrated(engine: Engine) -> bool:
    head = ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current == head

"""The Alembic migrations on SQLite and on PostgreSQL (``database_url``, tests/conftest.py): an
install upgraded release by release ends with the schema the ORM maps and keeps its data."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import make_url

from controller.database import MIGRATIONS_DIR, is_migrated, make_engine, migrate
from controller.records import ModelRecord
from controller.schema import Base
from controller.store import Store
from wire.routing_table import VersionState

SIG = {"inputs": '[{"type": "string", "name": "prompt", "required": true}]',
       "outputs": None, "params": None}


def revisions() -> list[str]:
    newest_first = ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()
    return [script.revision for script in reversed(list(newest_first))]


def test_one_migration_at_a_time_ends_at_the_mapped_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    steps = revisions()
    assert steps[:6] == ["0001", "0002", "0003", "0004", "0005", "0006"]
    for revision in steps:
        assert not is_migrated(engine)
        migrate(engine, revision)
        with engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == revision
    assert is_migrated(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == [], "controller/schema.py and the migrations disagree"
    engine.dispose()


def test_a_database_of_the_first_release_keeps_its_decisions(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine, "0001")
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    models = sa.table("registered_models", sa.column("name"), sa.column("default_version"),
                      sa.column("contract", sa.JSON), sa.column("policy"),
                      sa.column("created_at", sa.DateTime(timezone=True)),
                      sa.column("updated_at", sa.DateTime(timezone=True)))
    versions = sa.table("model_versions", sa.column("model_name"), sa.column("version"),
                        sa.column("number"), sa.column("state"), sa.column("reasons", sa.JSON),
                        sa.column("signature", sa.JSON), sa.column("signature_read"),
                        sa.column("decided_against"),
                        sa.column("decided_at", sa.DateTime(timezone=True)),
                        sa.column("source"))
    revision = sa.table("table_revision", sa.column("id"), sa.column("revision"),
                        sa.column("digest"),
                        sa.column("published_at", sa.DateTime(timezone=True)))
    with engine.begin() as connection:
        connection.execute(models.insert().values(
            name="m", default_version="1", contract=SIG, policy="exact", created_at=when,
            updated_at=when))
        connection.execute(versions.insert(), [
            {"model_name": "m", "version": "1", "number": 1, "state": "live", "reasons": [],
             "signature": SIG, "signature_read": True, "decided_against": "d1",
             "decided_at": when, "source": "models:/m-1"},
            {"model_name": "m", "version": "2", "number": 2, "state": "quarantined",
             "reasons": ["input 'prompt' removed"], "signature": None, "signature_read": True,
             "decided_against": "d1", "decided_at": when, "source": "models:/m-2"},
        ])
        connection.execute(revision.insert().values(id=1, revision=41, digest="old",
                                                    published_at=when))
    migrate(engine)
    assert is_migrated(engine)

    store = Store(engine)
    record = store.load_model("m")
    assert record is not None
    # ``strict``, the default before issue 17, is stored as what it means now (0015).
    assert (record.policy, record.environment_policy) == ("exact", "isolate")
    assert record.default_version == "1" and record.contract == SIG
    v1, v2 = record.versions["1"], record.versions["2"]
    assert v1.state is VersionState.LIVE and v1.decided_at == when and v1.warnings == []
    assert v2.state is VersionState.QUARANTINED and v2.reasons == ["input 'prompt' removed"]
    # Decided before artifacts were bound: no digest, so the reconciler reads them again.
    assert v1.mlmodel_digest is None and v1.override is None
    # A stored model starts at generation 1 (0 means "not stored" to a reconcile's read), and
    # its next write is fenced on it like any other.
    assert record.generation == 1
    written = store.update_model("m", lambda c: replace(c, default_version="2") if c else c)
    assert written is not None and written.generation == 2
    # The database keeps counting where it was, under the epoch 0002 gave it.
    table = store.publish()
    assert table.revision == 42 and table.epoch
    assert store.publish().epoch == table.epoch
    engine.dispose()


def test_a_plain_postgresql_url_with_an_escaped_password_migrates(postgres_url: str) -> None:
    # What a user writes: no driver named, and a password with URL-escaped characters (which
    # the Alembic config file would read as interpolation). The test server trusts local
    # connections, so the password itself is not checked.
    url = make_url(postgres_url).set(drivername="postgresql", password="p@ss%w/rd")
    rendered = url.render_as_string(hide_password=False)
    assert rendered.startswith("postgresql://postgres:p%40ss%25w%2Frd@")
    engine = make_engine(rendered)
    assert engine.dialect.driver == "psycopg"
    migrate(engine)
    assert is_migrated(engine)
    Store(engine).publish()
    engine.dispose()


def test_a_database_left_at_the_top_of_an_integer_revision_publishes_on(
    database_url: str,
) -> None:
    """Before the catch-up was bounded, one poll could leave the revision at 2**31 - 1, the
    top of PostgreSQL's INTEGER: no later table could be published. The upgrade makes room."""
    engine = make_engine(database_url)
    migrate(engine, "0010")
    # The row as that release wrote it, in SQL: this release's ORM maps columns 0010 lacks.
    with engine.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO table_revision (id, revision, digest, epoch, published_at) "
                    "VALUES (1, 2147483647, :digest, :epoch, :at)"),
            {"digest": "0" * 64, "epoch": "e" * 32, "at": datetime.now(UTC)},
        )
    migrate(engine)
    store = Store(engine)
    store.update_model("m", lambda _: ModelRecord(name="m", policy="backward"))
    table = store.publish()
    assert table.revision == 2**31
    assert store.published() == (table.epoch, 2**31)
    engine.dispose()

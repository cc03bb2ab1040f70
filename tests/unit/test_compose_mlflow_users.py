"""``deploy/compose/mlflow_users.py`` makes the compose demo's MLflow users before the server
starts: the controller's an admin, the replicas' and the registration's not, each with the
password its grant holds, and a changed password taken at the next start (MLflow's own
bootstrap makes its admin once and never again). Run as the `mlflow` container runs it, on a
temporary user store, in this process, with the exec of ``mlflow server`` recorded instead."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "deploy" / "compose" / "mlflow_users.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlflow_users", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _start(
    tmp_path: Path, passwords: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """One start of the `mlflow` container's command; what it printed."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    for name, value in passwords.items():
        (secrets / f"mlflow_{name}_password").write_text(value)
    ini = tmp_path / "auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path}/users/basic_auth.db\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.setenv("SIGSERVE_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "sigserve-controller")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", passwords["controller"])
    execs: list[list[str]] = []
    monkeypatch.setattr(os, "execvp", lambda _file, argv: execs.append(list(argv)))
    _script().main(["mlflow", "server", "--app-name=basic-auth"])
    # Then the server, as given.
    assert execs == [["mlflow", "server", "--app-name=basic-auth"]]
    out = capsys.readouterr()
    return out.out + out.err


def _store(tmp_path: Path) -> SqlAlchemyStore:
    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{tmp_path}/users/basic_auth.db")
    return store


def test_each_user_is_made_with_its_grants_password_and_only_the_controller_is_admin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    passwords = {"controller": "c" * 32, "serving": "s" * 32, "registrar": "r" * 32}
    said = _start(tmp_path, passwords, monkeypatch, capsys)

    store = _store(tmp_path)
    users = {"sigserve-controller": "controller", "sigserve-serving": "serving",
             "sigserve-registrar": "registrar"}  # fmt: skip
    for user, key in users.items():
        assert store.authenticate_user(user, passwords[key]), user
    admins = {u.username for u in store.list_users() if u.is_admin}
    assert admins == {"sigserve-controller"}
    # It says what it did, never a password.
    assert "sigserve-serving created" in said
    assert not any(p in said for p in passwords.values())


def test_a_password_changed_in_the_grant_is_taken_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = {"controller": "c" * 32, "serving": "s" * 32, "registrar": "r" * 32}
    _start(tmp_path, first, monkeypatch, capsys)
    said = _start(tmp_path, {**first, "controller": "C" * 32, "serving": "S" * 32},
                  monkeypatch, capsys)  # fmt: skip

    store = _store(tmp_path)
    assert store.authenticate_user("sigserve-serving", "S" * 32)
    assert not store.authenticate_user("sigserve-serving", "s" * 32)
    assert store.authenticate_user("sigserve-controller", "C" * 32)
    assert "sigserve-serving updated" in said

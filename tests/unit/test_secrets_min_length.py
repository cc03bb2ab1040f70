"""Empty and short secrets are refused at start (issue 16): before, ``SIGSERVE_ADMIN_TOKEN=``
gave an empty token that ``Authorization: Bearer`` with nothing matched, and an empty webhook
secret keyed the HMAC with nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from starlette.requests import HTTPConnection

from controller.serving_auth import presents_bearer
from controller.settings import MIN_SECRET_CHARS, ControllerSettings
from sigserve.local_stack import run_local_stack

VARIABLES = ["SIGSERVE_ADMIN_TOKEN", "SIGSERVE_WEBHOOK_SECRET", "SIGSERVE_SERVING_TOKEN"]
GOOD = "x" * MIN_SECRET_CHARS


@pytest.fixture()
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("SIGSERVE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SIGSERVE_HOME", str(tmp_path))
    for name in VARIABLES:
        monkeypatch.setenv(name, GOOD)
    return monkeypatch


def _with_authorization(value: str) -> HTTPConnection:
    return HTTPConnection(
        {"type": "http", "headers": [(b"authorization", value.encode())], "path": "/"}
    )


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "bearer  ", ""])
def test_an_empty_presented_token_never_matches_even_an_empty_expected_one(header: str) -> None:
    assert not presents_bearer(_with_authorization(header), SecretStr(""))
    assert not presents_bearer(_with_authorization(header), SecretStr(GOOD))


def test_the_token_itself_still_matches() -> None:
    assert presents_bearer(_with_authorization(f"Bearer {GOOD}"), SecretStr(GOOD))


@pytest.mark.parametrize("variable", VARIABLES)
@pytest.mark.parametrize("value", ["", "x" * (MIN_SECRET_CHARS - 1)])
def test_the_controller_refuses_a_short_secret_in_one_line_naming_it(
    environment: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    environment.setenv(variable, value)
    with pytest.raises(ValidationError):
        ControllerSettings()  # type: ignore[call-arg]
    with pytest.raises(SystemExit) as exited:
        ControllerSettings.from_environment()
    said = str(exited.value)
    assert "\n" not in said
    assert f"{variable} must be at least {MIN_SECRET_CHARS} characters" in said
    assert said.count("SIGSERVE_") == 1, said


def test_secrets_of_the_minimum_length_are_taken(environment: pytest.MonkeyPatch) -> None:
    settings = ControllerSettings.from_environment()
    assert settings.admin_token.get_secret_value() == GOOD


def test_a_missing_admin_token_is_named_too(environment: pytest.MonkeyPatch) -> None:
    environment.delenv("SIGSERVE_ADMIN_TOKEN")
    with pytest.raises(SystemExit, match="SIGSERVE_ADMIN_TOKEN is required"):
        ControllerSettings.from_environment()


def test_python_m_controller_with_an_empty_token_exits_with_one_line(
    environment: pytest.MonkeyPatch,
) -> None:
    environment.setenv("SIGSERVE_ADMIN_TOKEN", "")
    done = subprocess.run(
        [sys.executable, "-m", "controller"], capture_output=True, text=True, timeout=120,
        env=dict(os.environ),
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "SIGSERVE_ADMIN_TOKEN" in lines[0], done.stderr


@pytest.fixture()
def taken_port() -> Iterator[int]:
    """A port something listens on: a stack that got past its settings stops there, unstarted."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("variable", VARIABLES)
def test_the_local_stack_refuses_a_short_secret_before_starting_anything(
    environment: pytest.MonkeyPatch,
    taken_port: int,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    variable: str,
) -> None:
    environment.setenv("SIGSERVE_MLFLOW_PORT", str(taken_port))
    environment.setenv(variable, "")
    assert run_local_stack() == 1
    said = capsys.readouterr().out.strip()
    assert len(said.splitlines()) == 1, said
    assert f"{variable} must be at least {MIN_SECRET_CHARS} characters" in said
    assert not (tmp_path / "secrets.json").exists(), "nothing was made or started"

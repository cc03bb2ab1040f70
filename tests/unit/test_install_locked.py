"""``make``'s install (scripts/install_locked.py) hands uv pip's settings by serving's own rule
(``serving/pip_settings.py``, loaded by path) and pip's constraints; no URL reaches uv's command
line or the script's output."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from serving import pip_settings

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "install_locked.py"
SECRET_INDEX = "https://user:s3cret@pypi.corp/simple"
SECRET_CONSTRAINTS = "https://user:s3cret@files.corp/constraints.txt"
ARGS = ["--quiet", "-c", "requirements.lock", "-e", ".[stack,dev]"]


# As make runs it: a file, not a module of the package.
install_locked = SimpleNamespace(**runpy.run_path(str(SCRIPT)))


def conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pip.conf"
    path.write_text(text)
    return path


def test_uv_is_given_serving_s_answers(tmp_path: Path) -> None:
    pip_conf = conf(tmp_path, f"[install]\nindex-url = {SECRET_INDEX}\nno-index = on\n"
                              "find-links = /opt/wheels\ntrusted-host = mirror.corp\n")  # fmt: skip
    python = str(tmp_path / "venv" / "bin" / "python")
    argv, env = install_locked.command(python, ARGS, {"HOME": "/root"}, [pip_conf])
    options, variables = pip_settings.uv_index({"HOME": "/root"}, [pip_conf])
    assert options == ["--no-index"]
    assert argv == [str(tmp_path / "venv" / "bin" / "uv"), "pip", "install", "--python", python,
                    *options, *ARGS]  # fmt: skip
    assert env == {"HOME": "/root", **variables}


def test_no_pip_settings_leave_the_command_as_it_was(tmp_path: Path) -> None:
    argv, env = install_locked.command("/v/bin/python", ARGS, {"HOME": "/root"}, [tmp_path / "x"])
    assert argv == ["/v/bin/uv", "pip", "install", "--python", "/v/bin/python", *ARGS]
    assert env == {"HOME": "/root"}


def test_pips_constraints_join_the_commands_in_uvs_variable(tmp_path: Path) -> None:
    pip_conf = conf(tmp_path, f"[global]\nconstraint = /etc/c.txt {SECRET_CONSTRAINTS}\n")
    argv, env = install_locked.command("/v/bin/python", ARGS, {}, [pip_conf])
    # As pip adds them: the files' first, then the command's; none on the command line, where a
    # URL's credentials would show.
    assert argv == ["/v/bin/uv", "pip", "install", "--python", "/v/bin/python",
                    "--quiet", "-e", ".[stack,dev]"]  # fmt: skip
    assert env["UV_CONSTRAINT"] == f"/etc/c.txt {SECRET_CONSTRAINTS} requirements.lock"
    # A variable wins over the files; every spelling of the command's option is taken.
    argv, env = install_locked.command(
        "/v/bin/python", ["--constraint=a.txt", "-cb.txt", "--constraints", "c.txt", "x"],
        {"PIP_CONSTRAINT": "/v1.txt"}, [pip_conf],
    )  # fmt: skip
    assert argv[5:] == ["x"] and env["UV_CONSTRAINT"] == "/v1.txt a.txt b.txt c.txt"
    with pytest.raises(install_locked.UnusableConstraint):
        install_locked.command("/v/bin/python", ["-c", "my constraints.txt"], {}, [pip_conf])


def test_the_script_runs_on_a_bare_python_and_names_no_value(tmp_path: Path) -> None:
    """The script as make runs it, on a Python without site-packages (nothing is installed yet),
    with a stand-in for the venv's uv that writes down what it was given."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    seen = tmp_path / "seen.txt"
    (bin_dir / "uv").write_text(f'#!/bin/sh\necho "$@" > {seen}\nenv | grep ^UV_ >> {seen}\n')
    (bin_dir / "uv").chmod(0o755)
    pip_conf = conf(tmp_path, f"[global]\nindex-url = {SECRET_INDEX}\n"
                              f"constraint = {SECRET_CONSTRAINTS}\n")  # fmt: skip
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PIP_CONFIG_FILE": str(pip_conf),
               "XDG_CONFIG_DIRS": str(tmp_path / "xdg")}  # fmt: skip
    done = subprocess.run(
        [str(bin_dir / "python"), "-S", str(SCRIPT), *ARGS], env=environ, cwd=ROOT,
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "UV_INDEX_URL" in done.stderr and "UV_CONSTRAINT" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout
    command, *variables = seen.read_text().splitlines()
    assert "s3cret" not in command and "-c" not in command.split()
    assert f"UV_INDEX_URL={SECRET_INDEX}" in variables

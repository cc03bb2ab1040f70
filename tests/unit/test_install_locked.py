"""``make``'s install (scripts/install_locked.py) hands uv the package index settings pip has, by
the same rule as serving's environment builds (its stdlib copy must give the same answers), and
pip's constraints; no index URL reaches uv's command line (``make`` echoes it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from serving.environment_builds import index_settings, pip_config_files

SCRIPT = Path(__file__).parents[2] / "scripts" / "install_locked.py"
SECRET_INDEX = "https://user:s3cret@pypi.corp/simple"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("install_locked", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


install_locked = load_script()


def conf(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


CASES = {
    "nothing set": ({}, []),
    "find-links and extra indexes in a file": (
        {},
        [("global", "[global]\nfind-links = /opt/wheels\n"
                    "extra-index-url = file:///opt/a/simple\n  file:///opt/b/simple\n"
                    "cert = /etc/ssl/ca.pem\n")],
    ),
    "a later file and the install section win": (
        {},
        [("first", "[global]\nindex-url = https://first/simple\n"),
         ("second", f"[install]\nindex-url = {SECRET_INDEX}\n")],
    ),
    "a variable wins over the files": (
        {"PIP_INDEX_URL": SECRET_INDEX, "PIP_FIND_LINKS": "/w1 /w2", "PIP_CERT": "/ca.pem"},
        [("global", "[global]\nindex-url = https://file/simple\nfind-links = /opt/wheels\n")],
    ),
    "uv's own variables win over pip's": (
        {"UV_INDEX_URL": "https://uv/simple", "PIP_INDEX_URL": SECRET_INDEX,
         "SSL_CERT_FILE": "/uv-ca.pem"},
        [("global", "[global]\nfind-links = /opt/wheels\n")],
    ),
    "a file that is not pip's format": ({}, [("broken", "index-url = no section\n")]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_uv_is_given_the_index_settings_serving_builds_with(case: str, tmp_path: Path) -> None:
    environ, files = CASES[case]
    paths = [conf(tmp_path, name, text) for name, text in files] + [tmp_path / "missing"]
    _, expected = index_settings(environ, paths)
    assert install_locked.index_variables(environ, paths) == expected


def test_the_command_carries_the_constraints_and_no_index_url(tmp_path: Path) -> None:
    pip_conf = conf(tmp_path, "pip.conf", "[global]\nconstraint = /etc/xdg/pip/constraints.txt\n"
                                          f"index-url = {SECRET_INDEX}\nfind-links = /opt/wheels\n")
    python = str(tmp_path / "venv" / "bin" / "python")
    argv, env = install_locked.command(
        python, ["-c", "requirements.lock", "-e", ".[stack,dev]"], {"HOME": "/root"}, [pip_conf]
    )
    assert argv == [
        str(tmp_path / "venv" / "bin" / "uv"), "pip", "install", "--python", python,
        "-c", "/etc/xdg/pip/constraints.txt", "-c", "requirements.lock", "-e", ".[stack,dev]",
    ]  # fmt: skip
    assert not any("s3cret" in a for a in argv)
    assert env["UV_INDEX_URL"] == SECRET_INDEX and env["UV_FIND_LINKS"] == "/opt/wheels"
    assert env["UV_INDEX_STRATEGY"] == "unsafe-best-match" and env["HOME"] == "/root"
    # A variable wins over the files, as in pip.
    argv, _ = install_locked.command(python, [], {"PIP_CONSTRAINT": "/a.txt /b.txt"}, [pip_conf])
    assert argv[5:] == ["-c", "/a.txt", "-c", "/b.txt"]


@pytest.mark.parametrize("environ", [{}, {"PIP_CONFIG_FILE": "/custom.conf"}])
def test_pips_files_are_the_ones_serving_reads(environ: dict[str, str], tmp_path: Path) -> None:
    home, prefix = tmp_path / "home", tmp_path / "venv"
    assert install_locked.pip_config_files(environ, home, prefix) == pip_config_files(
        environ, home, prefix
    )

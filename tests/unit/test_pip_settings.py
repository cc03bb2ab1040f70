"""pip's settings as pip itself reads them (pip's own parser is the oracle, run here on the same
files and variables), and what uv is told of them (``serving.pip_settings``)."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from serving.pip_settings import config_files, settings, uv_index

PYPI = "https://pypi.org/simple"
SECRET_INDEX = "https://user:s3cret@pypi.corp/simple"

# Where each kind of file lies under tmp_path (the global one through XDG_CONFIG_DIRS).
WHERE = {
    "global": "xdg/pip/pip.conf",
    "legacy": "home/.pip/pip.conf",
    "user": "home/.config/pip/pip.conf",
    "site": "venv/pip.conf",
    "env": "env.conf",
}

# name: (variables, {file: text}, what pip ends with where it differs from its defaults)
CASES: dict[str, tuple[dict[str, str], dict[str, str], dict[str, Any]]] = {
    "an earlier file's [install] beats a later file's [global]": (
        {},
        {"global": "[install]\nindex-url = https://install/simple\n",
         "site": "[global]\nindex-url = https://global/simple\n"},
        {"index_url": "https://install/simple"},
    ),
    "a later file wins, index_url spelt with an underscore": (
        {},
        {"global": "[global]\nindex-url = https://first/simple\n",
         "user": f"[global]\nindex_url = {SECRET_INDEX}\n"},
        {"index_url": SECRET_INDEX},
    ),
    "a variable wins over [install]": (
        {"PIP_INDEX_URL": "https://variable/simple", "PIP_FIND_LINKS": "/w1 /w2"},
        {"legacy": "[install]\nindex-url = https://file/simple\nfind-links = /opt/wheels\n"},
        {"index_url": "https://variable/simple", "find_links": ["/w1", "/w2"]},
    ),
    "PIP_CONFIG_FILE that exists: the user's files are not read": (
        {"PIP_CONFIG_FILE": "ENV"},
        {"user": "[global]\nfind-links = /user-wheels\n",
         "env": "[global]\nextra-index-url = https://extra/simple\n"},
        {"extra_index_urls": ["https://extra/simple"]},
    ),
    "PIP_CONFIG_FILE that does not exist: the user's files are": (
        {"PIP_CONFIG_FILE": "ENV"},
        {"user": "[global]\nfind-links = /user-wheels\n"},
        {"find_links": ["/user-wheels"]},
    ),
    "PIP_CONFIG_FILE=/dev/null: no file, variables still": (
        {"PIP_CONFIG_FILE": os.devnull, "PIP_TRUSTED_HOST": "mirror.corp"},
        {"global": "[global]\nindex-url = https://global/simple\n",
         "site": "[install]\nno-index = yes\n"},
        {"trusted_hosts": ["mirror.corp"]},
    ),
    "lists, no-index, trusted hosts, certificates": (
        {},
        {"user": "[global]\nextra-index-url = https://a/simple\n  https://b/simple\n"
                 "no-index = true\ntrusted-host = a b:8443\ncert = ~/ca.pem\n"
                 "client-cert = /etc/client.pem\n"},
        {"extra_index_urls": ["https://a/simple", "https://b/simple"], "no_index": True,
         "trusted_hosts": ["a", "b:8443"], "cert": "HOME/ca.pem",
         "client_cert": "/etc/client.pem"},
    ),
    "an empty value unsets an earlier file's": (
        {},
        {"global": "[global]\nindex-url = https://first/simple\nfind-links = /w\n",
         "site": "[global]\nindex-url =\n"},
        {"find_links": ["/w"]},
    ),
    "a variable turns no-index off": (
        {"PIP_NO_INDEX": "off"},
        {"user": "[install]\nno-index = yes\n"},
        {},
    ),
    "another command's section is not install's": (
        {},
        {"user": "[download]\nindex-url = https://download/simple\n"
                 "[DEFAULT]\nfind-links = /everywhere\n"
                 "[global]\n"},
        {"find_links": ["/everywhere"]},
    ),
    "XDG_CONFIG_HOME moves the user's file; constraints": (
        {"XDG_CONFIG_HOME": "XH", "PIP_CONSTRAINT": "/v1.txt /v2.txt"},
        {"user": "[global]\nfind-links = /not-read\n",
         "global": "[install]\nconstraint = /c.txt\n"},
        {"find_links": ["/xh-wheels"], "constraints": ["/v1.txt", "/v2.txt"]},
    ),
}  # fmt: skip


def _write(tmp_path: Path, environ: dict[str, str], files: dict[str, str]) -> dict[str, str]:
    for kind, text in files.items():
        path = tmp_path / WHERE[kind]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    placed = {"ENV": str(tmp_path / WHERE["env"]), "XH": str(tmp_path / "xh")}
    (tmp_path / "xh" / "pip").mkdir(parents=True, exist_ok=True)
    (tmp_path / "xh" / "pip" / "pip.conf").write_text("[global]\nfind-links = /xh-wheels\n")
    return {
        "HOME": str(tmp_path / "home"), "XDG_CONFIG_DIRS": str(tmp_path / "xdg"),
        **{k: placed.get(v, v) for k, v in environ.items()},
    }  # fmt: skip


def _as_pip(found: dict[str, str], home: str) -> dict[str, Any]:
    """``settings``' answer in the shape of pip's parsed options."""
    return {
        "index_url": found.get("index-url", PYPI),
        "extra_index_urls": found.get("extra-index-url", "").split(),
        "find_links": found.get("find-links", "").split(),
        "no_index": found.get("no-index", "no").lower() in ("y", "yes", "t", "true", "on", "1"),
        "trusted_hosts": found.get("trusted-host", "").split(),
        "cert": found["cert"].replace("~", home) if "cert" in found else None,
        "client_cert": found.get("client-cert"),
        "constraints": found.get("constraint", "").split(),
    }


def _pip_reads(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], prefix: Path) -> Any:
    from pip._internal.commands import create_command

    for name in list(os.environ):
        if name.startswith(("PIP_", "XDG_")):
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "prefix", str(prefix))
    return create_command("install").parser.get_default_values()


@pytest.mark.parametrize("case", list(CASES))
def test_settings_are_read_as_pip_reads_them(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given, files, expected = CASES[case]
    environ = _write(tmp_path, given, files)
    home, prefix = Path(environ["HOME"]), tmp_path / "venv"
    ours = _as_pip(settings(environ, config_files(environ, home, prefix)), str(home))
    options = _pip_reads(monkeypatch, environ, prefix)
    pips = {key: getattr(options, key) for key in ours}
    assert ours == pips
    # And what the case is about (the machine's /etc/pip.conf is read by both, so the rest
    # may differ from pip's defaults).
    for key, value in expected.items():
        assert ours[key] == (value.replace("HOME", str(home)) if key == "cert" else value)


def test_the_files_are_pips_in_pips_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pip._internal.configuration import Configuration

    for given in ({}, {"XDG_CONFIG_HOME": "XH", "PIP_CONFIG_FILE": "ENV"}):
        environ = _write(tmp_path / str(len(given)), given, {})
        _pip_reads(monkeypatch, environ, tmp_path / "venv")
        kinds = list(Configuration(isolated=False).iter_config_files())
        # pip before 24 lists the file PIP_CONFIG_FILE names first, pip now last; both let its
        # values win over the site file (their OVERRIDE_ORDER is the same). A fresh venv's own
        # pip (3.11's ensurepip: 23.2.1) is the older one: its listing is compared with the
        # file named by the variable moved last.
        kinds.sort(key=lambda kind: kind[0] == "env")
        pips = [Path(f) for _, fs in kinds for f in fs]
        assert config_files(environ, Path(environ["HOME"]), tmp_path / "venv") == pips
    assert config_files({"PIP_CONFIG_FILE": os.devnull}, tmp_path, tmp_path) == []


# What uv is told


def test_no_pip_settings_tell_uv_nothing(tmp_path: Path) -> None:
    assert uv_index({}, [tmp_path / "absent.conf"]) == ([], {})
    assert uv_index({"HOME": "/root"}, []) == ([], {})


def test_no_index_is_an_option_and_drops_the_indexes(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nindex-url = {SECRET_INDEX}\nextra-index-url = https://x/simple\n"
                    "find-links = /opt/wheels\n[install]\nno-index = yes\n")  # fmt: skip
    assert uv_index({}, [conf]) == (
        ["--no-index"],
        {"UV_FIND_LINKS": "/opt/wheels", "UV_INDEX_STRATEGY": "unsafe-best-match"},
    )
    # A variable turns it off again, as in pip: the indexes are back, as variables.
    options, variables = uv_index({"PIP_NO_INDEX": "0"}, [conf])
    assert options == [] and variables["UV_INDEX_URL"] == SECRET_INDEX
    assert variables["UV_EXTRA_INDEX_URL"] == "https://x/simple"


def test_trusted_hosts_and_certificates_become_uvs_variables(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\ntrusted-host = mirror.corp\n  10.0.0.5:8443\n"
                    "cert = /etc/corp-ca.pem\nclient-cert = /etc/me.pem\n")  # fmt: skip
    assert uv_index({}, [conf]) == ([], {
        "UV_INSECURE_HOST": "mirror.corp 10.0.0.5:8443", "SSL_CERT_FILE": "/etc/corp-ca.pem",
        "SSL_CLIENT_CERT": "/etc/me.pem",
    })  # fmt: skip
    # uv's own win, and are passed on.
    environ = {"UV_INSECURE_HOST": "own", "SSL_CERT_FILE": "/own-ca.pem"}
    assert uv_index(environ, [conf])[1] == {
        "UV_INSECURE_HOST": "own", "SSL_CERT_FILE": "/own-ca.pem",
        "SSL_CLIENT_CERT": "/etc/me.pem",
    }  # fmt: skip


def test_the_module_needs_nothing_but_the_standard_library() -> None:
    source = Path(__file__).parents[2] / "serving" / "pip_settings.py"
    tree = ast.parse(source.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}  # fmt: skip
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}  # fmt: skip
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}

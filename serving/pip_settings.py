"""pip's settings read as pip reads them, and what uv is told of them: the one rule for serving's
environment builds (``serving.environment_builds``) and ``make``'s install
(``scripts/install_locked.py``).

uv reads its own ``UV_*`` variables but not pip's settings, and a machine's package index, local
wheels or certificate authority often live there. pip's way, as pip 26.3 has it
(``pip/_internal/configuration.py``, ``pip/_internal/cli/parser.py``):

- files, in this order: global (``pip/pip.conf`` under each of ``$XDG_CONFIG_DIRS``, default
  ``/etc/xdg``, then ``/etc/pip.conf``), user (``~/.pip/pip.conf``, then ``pip/pip.conf`` under
  ``$XDG_CONFIG_HOME``, default ``~/.config``; skipped when ``PIP_CONFIG_FILE`` names a file that
  exists), site (the environment's ``pip.conf``), then ``PIP_CONFIG_FILE``.
  ``PIP_CONFIG_FILE=/dev/null`` (``os.devnull``): no file at all;
- every file's ``[global]``, then every file's ``[install]``, then the ``PIP_*`` variables, a
  later one winning: ``[install]`` of the first file beats ``[global]`` of the last. An empty
  value counts as not set, and it unsets an earlier file's value in the same section;
- names are lower case with ``-`` for ``_`` (``index_url`` in a file, ``PIP_INDEX_URL``); lists
  (``extra-index-url``, ``find-links``, ``trusted-host``, ``constraint``) split on white space;
  ``no-index`` is a boolean (``yes``/``true``/``on``/``1``...; pip refuses anything else, here it
  counts as not set).

What uv is told (``uv_index``): uv's own variables when the process has them (``UV_INDEX_URL``,
``UV_DEFAULT_INDEX``, ``UV_EXTRA_INDEX_URL``, ``UV_INDEX``, ``UV_FIND_LINKS``,
``UV_INSECURE_HOST``, ``UV_NATIVE_TLS``, ``SSL_CERT_FILE``, ``SSL_CLIENT_CERT``), and pip's
settings only when none of uv's names an index: ``index-url`` as ``UV_INDEX_URL``,
``extra-index-url`` as ``UV_EXTRA_INDEX_URL``, ``find-links`` as ``UV_FIND_LINKS``,
``trusted-host`` as ``UV_INSECURE_HOST``, ``cert`` as ``SSL_CERT_FILE``, ``client-cert`` as
``SSL_CLIENT_CERT``, and ``no-index`` as the option ``--no-index`` (uv has no variable for it;
the index URLs are then left out, as pip ignores them). With more than one index, or
find-links, uv is told pip's way of choosing (``UV_INDEX_STRATEGY=unsafe-best-match``: the best
version from any of them), not its own (the first index that has the package).

URLs reach uv as variables, never on a command line: an index URL may carry credentials
(``https://user:token@host/simple``), and ``make``, Ray's runtime-env agent and ``ps`` show
command lines. Nothing here logs or says a value.

Standard library only: ``scripts/install_locked.py`` loads this file by its path with the bare
venv's Python, before anything is installed.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

# uv's own settings: passed on as they are, and they win over pip's.
UV_VARIABLES = (
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
    "UV_FIND_LINKS",
    "UV_INSECURE_HOST",
    "UV_NATIVE_TLS",
    "SSL_CERT_FILE",
    "SSL_CLIENT_CERT",
)
_TRUE = frozenset({"y", "yes", "t", "true", "on", "1"})
_FALSE = frozenset({"n", "no", "f", "false", "off", "0"})


def _xdg_dirs(value: str) -> list[Path]:
    # platformdirs (pip's) keeps absolute entries only; a relative one is ignored, not resolved.
    return [Path(p.strip()) for p in value.split(os.pathsep) if os.path.isabs(p.strip())]


def config_files(environ: Mapping[str, str], home: Path, prefix: Path) -> list[Path]:
    """pip's configuration files, in the order pip reads them (a later one wins); none for
    ``PIP_CONFIG_FILE=/dev/null``."""
    named = environ.get("PIP_CONFIG_FILE")
    if named == os.devnull:
        return []
    system = _xdg_dirs(environ.get("XDG_CONFIG_DIRS", "")) or [Path("/etc/xdg")]
    files = [d / "pip" / "pip.conf" for d in system] + [Path("/etc/pip.conf")]
    if not (named and os.path.exists(named)):
        user = _xdg_dirs(environ.get("XDG_CONFIG_HOME", ""))[:1] or [home / ".config"]
        files += [home / ".pip" / "pip.conf", user[0] / "pip" / "pip.conf"]
    files.append(prefix / "pip.conf")
    if named:
        files.append(Path(named))
    return files


class _Parser(configparser.RawConfigParser):
    def optionxform(self, optionstr: str) -> str:
        return _name(optionstr)


def _name(name: str) -> str:
    return name.lower().replace("_", "-").removeprefix("--")


def settings(
    environ: Mapping[str, str], files: Sequence[Path], command: str = "install"
) -> dict[str, str]:
    """Every option pip's ``command`` takes from ``files`` and ``PIP_*`` variables: its name
    (``index-url``) and its value as written (a list still one string)."""
    sections: dict[str, dict[str, str]] = {"global": {}, command: {}, ":env:": {}}
    for path in files:
        parser = _Parser()
        try:
            parser.read(path)
        except (OSError, UnicodeDecodeError, configparser.Error):
            continue  # pip stops with an error here; a build or an install is better than none
        for section in parser.sections():
            if section in sections:
                sections[section].update(parser.items(section))
    for key, value in environ.items():
        if key.startswith("PIP_") and key[4:].lower() not in ("version", "help"):
            sections[":env:"][_name(key[4:])] = value
    found: dict[str, str] = {}
    for values in sections.values():
        found.update((k, v) for k, v in values.items() if v)
    return found


def _listed(value: str | None) -> list[str]:
    return (value or "").split()


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def uv_index(environ: Mapping[str, str], files: Sequence[Path]) -> tuple[list[str], dict[str, str]]:
    """uv's options and variables for the package index settings of ``environ`` and pip's
    ``files`` (module docstring). No URL is ever among the options."""
    variables = {name: environ[name] for name in UV_VARIABLES if environ.get(name)}
    options: list[str] = []
    if any(name.startswith("UV_") and "INDEX" in name for name in variables):
        return options, variables
    pip = settings(environ, files)
    no_index = _flag(pip.get("no-index"))
    extra = [] if no_index else _listed(pip.get("extra-index-url"))
    links = _listed(pip.get("find-links"))
    hosts = _listed(pip.get("trusted-host"))
    if no_index:
        options.append("--no-index")
    elif pip.get("index-url"):
        variables["UV_INDEX_URL"] = pip["index-url"].strip()
    if extra:
        variables["UV_EXTRA_INDEX_URL"] = " ".join(extra)
    if links:
        variables["UV_FIND_LINKS"] = ",".join(links)
    if extra or links:
        # pip takes the best version from every index; uv, by default, only from the first
        # index that has the package (a mirror with some versions of pandas hid the rest).
        variables["UV_INDEX_STRATEGY"] = "unsafe-best-match"
    if hosts and "UV_INSECURE_HOST" not in variables:
        variables["UV_INSECURE_HOST"] = " ".join(hosts)
    for key, variable in (("cert", "SSL_CERT_FILE"), ("client-cert", "SSL_CLIENT_CERT")):
        if pip.get(key) and variable not in variables:
            variables[variable] = os.path.expanduser(pip[key].strip())
    return options, variables


def constraints(environ: Mapping[str, str], files: Sequence[Path]) -> list[str]:
    """pip's ``constraint`` files (or URLs), in pip's order."""
    return _listed(settings(environ, files).get("constraint"))

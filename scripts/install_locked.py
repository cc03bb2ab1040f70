"""``make``'s install: the locked set into the venv by ``uv pip install``, with pip's settings.

Run by the venv's Python, after ``pip`` has put the locked ``uv`` in the venv; the arguments are
``uv pip install``'s (``-c requirements.lock -e '.[stack,dev]'``). uv installs the same pins in
one resolve in a fraction of pip's time (figures: README "Tests and benchmarks"), but it does not
read pip's settings, and a machine's package index, local wheels (this one's CPU build of torch)
or constraints often live there. So they are passed on as pip would apply them:

- the package index, extra indexes, find-links and ``cert``: the rule serving builds
  environments with (``serving.environment_builds``, module docstring), as ``UV_*`` variables,
  never as options (an index URL may carry credentials, and ``make`` echoes its command lines).
  This copy is stdlib only: it runs before anything is installed.
  tests/unit/test_install_locked.py holds it to ``serving.environment_builds``' answers;
- pip's ``constraint`` (``PIP_CONSTRAINT`` or the files' ``constraint``) as more ``-c`` files.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

_UV_VARIABLES = (
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
    "UV_FIND_LINKS",
    "UV_NATIVE_TLS",
    "SSL_CERT_FILE",
)
_KEYS = ("index-url", "extra-index-url", "find-links", "cert", "constraint")


def pip_config_files(environ: Mapping[str, str], home: Path, prefix: Path) -> list[Path]:
    """pip's configuration files, in the order pip reads them (a later one wins)."""
    files = [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf")]
    files += [home / ".pip" / "pip.conf", home / ".config" / "pip" / "pip.conf"]
    files.append(prefix / "pip.conf")
    if environ.get("PIP_CONFIG_FILE"):
        files.append(Path(environ["PIP_CONFIG_FILE"]))
    return files


def pip_settings(files: Sequence[Path]) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                for key in _KEYS:
                    if parser.has_option(section, key):
                        found[key] = parser.get(section, key)
    return found


def index_variables(environ: Mapping[str, str], files: Sequence[Path]) -> dict[str, str]:
    """uv's variables for the machine's package index settings (serving.environment_builds)."""
    variables = {name: environ[name] for name in _UV_VARIABLES if environ.get(name)}
    if any(name.startswith("UV_") and "INDEX" in name for name in variables):
        return variables
    conf = pip_settings(files)
    index = environ.get("PIP_INDEX_URL") or conf.get("index-url")
    extra = environ.get("PIP_EXTRA_INDEX_URL") or conf.get("extra-index-url", "")
    links = environ.get("PIP_FIND_LINKS") or conf.get("find-links", "")
    if index:
        variables["UV_INDEX_URL"] = index.strip()
    if extra.split():
        variables["UV_EXTRA_INDEX_URL"] = " ".join(extra.split())
    if links.split():
        variables["UV_FIND_LINKS"] = ",".join(links.split())
    if extra.split() or links.split():
        # pip takes the best version from every index; uv, by default, only from the first
        # index that has the package.
        variables["UV_INDEX_STRATEGY"] = "unsafe-best-match"
    cert = environ.get("PIP_CERT") or conf.get("cert")
    if cert and "SSL_CERT_FILE" not in variables:
        variables["SSL_CERT_FILE"] = cert.strip()
    return variables


def constraint_options(environ: Mapping[str, str], files: Sequence[Path]) -> list[str]:
    found = environ.get("PIP_CONSTRAINT") or pip_settings(files).get("constraint", "")
    return [option for path in found.split() for option in ("-c", path)]


def command(
    python: str, args: Sequence[str], environ: Mapping[str, str], files: Sequence[Path]
) -> tuple[list[str], dict[str, str]]:
    """uv's command line and environment for ``uv pip install ARGS`` into ``python``'s venv."""
    uv = str(Path(python).parent / "uv")
    argv = [uv, "pip", "install", "--python", python, *constraint_options(environ, files), *args]
    return argv, {**environ, **index_variables(environ, files)}


def main() -> int:
    files = pip_config_files(os.environ, Path.home(), Path(sys.prefix))
    argv, env = command(sys.executable, sys.argv[1:], os.environ, files)
    return subprocess.run(argv, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())

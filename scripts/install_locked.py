"""``make``'s install: the locked set into the venv by ``uv pip install``, with pip's settings.

Run by the venv's Python, after ``pip`` has put the locked ``uv`` in the venv; the arguments are
``uv pip install``'s (``-c requirements.lock -e '.[stack,dev]'``). uv installs the same pins in
one resolve in a fraction of pip's time (figures: README "Tests and benchmarks"), but it does not
read pip's settings, and a machine's package index, local wheels (this one's CPU build of torch)
or constraints often live there. So they are passed on as pip would apply them:

- the package index settings (index, extra indexes, find-links, ``no-index``, trusted hosts,
  ``cert``): ``serving/pip_settings.py``, the rule serving builds environments with, loaded by
  its path (standard library only: nothing else is installed yet, and importing the ``serving``
  package is not needed). URLs go to uv as ``UV_*`` variables, never as options;
- pip's ``constraint`` files, with the command's own ``-c`` files after them, as pip adds
  them. All of them then go in ``UV_CONSTRAINT`` (uv reads it only when the command line names
  none): a constraint may be a URL with credentials, and ``ps`` shows command lines.

It says on stderr which of uv's variables it set, by name only (a value may be a credential).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

SHARED = Path(__file__).resolve().parents[1] / "serving" / "pip_settings.py"
_CONSTRAINT_OPTIONS = ("-c", "--constraint", "--constraints")


def _load_shared() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sigserve_pip_settings", SHARED)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pip_settings = _load_shared()


class UnusableConstraint(ValueError):
    """A constraint path uv's ``UV_CONSTRAINT`` cannot carry (it splits on spaces)."""


def split_constraints(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``args`` without their constraint options, and those options' files."""
    rest: list[str] = []
    found: list[str] = []
    items = iter(args)
    for arg in items:
        name, equals, value = arg.partition("=")
        if arg in _CONSTRAINT_OPTIONS:
            found.append(next(items, ""))
        elif equals and name in _CONSTRAINT_OPTIONS[1:]:
            found.append(value)
        elif arg.startswith("-c") and not arg.startswith("--"):
            found.append(arg[2:])
        else:
            rest.append(arg)
    return rest, found


def command(
    python: str, args: Sequence[str], environ: Mapping[str, str], files: Sequence[Path]
) -> tuple[list[str], dict[str, str]]:
    """uv's command line and environment for ``uv pip install ARGS`` into ``python``'s venv."""
    uv = str(Path(python).parent / "uv")
    options, variables = pip_settings.uv_index(environ, files)
    args = list(args)
    from_pip = pip_settings.constraints(environ, files)
    if from_pip:
        args, own = split_constraints(args)
        every = from_pip + own
        if any(not path or path != path.strip() or len(path.split()) != 1 for path in every):
            raise UnusableConstraint(
                "a constraint file name with white space cannot go to uv with pip's constraints "
                "(UV_CONSTRAINT is split on spaces); rename it"
            )
        variables["UV_CONSTRAINT"] = " ".join(every)
    argv = [uv, "pip", "install", "--python", python, *options, *args]
    return argv, {**environ, **variables}


def main() -> int:
    files = pip_settings.config_files(os.environ, Path.home(), Path(sys.prefix))
    try:
        argv, env = command(sys.executable, sys.argv[1:], os.environ, files)
    except UnusableConstraint as error:
        print(f"install_locked: {error}", file=sys.stderr)
        return 2
    given = sorted(k for k, v in env.items() if os.environ.get(k) != v)
    if given:
        print(f"install_locked: pip's settings given to uv as {', '.join(given)}", file=sys.stderr)
    return subprocess.run(argv, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())

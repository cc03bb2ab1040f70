"""How an environment of a version's own is built, without Ray: the package index, the
``runtime_env`` asked for, and a failed build told as a person needs it (an environment that
inherits nothing is built by ``serving.environment_isolated`` with the same index settings).

An environment of kind ``layered`` is a Ray ``runtime_env`` with ``uv`` (``serving.environments``):
Ray clones the serving venv (so Ray, Serve, sigserve, its pandas and MLflow stay importable) and
runs ``uv pip install`` of the version's requirement lines in the clone. The install runs in
Ray's runtime-env agent on the node, with the agent's environment: uv reads its own ``UV_*``
variables there, but not pip's settings. So the replica that asks for the environment reads the
package index settings the machine has for pip, as pip reads them, and passes them to uv:
``serving.pip_settings`` (its module docstring: pip's files, sections and variables in pip's
order, uv's own variables winning, ``no-index``, ``trusted-host``, ``cert``), the one rule
``make``'s install (``scripts/install_locked.py``) uses too.

URLs reach uv as variables (``UV_INDEX_URL``, ``UV_EXTRA_INDEX_URL``, ``UV_FIND_LINKS``), never
as options (the only option is ``--no-index``): an index URL may carry credentials
(``https://user:token@host/simple``), and Ray's runtime-env agent logs the command lines it
runs, which ``ps`` shows too. Nothing here logs or tells a URL, a requirement line or uv's
output without ``redact`` (``user:pass@`` becomes ``***@``), and builds run with no credential
variables (``tool_env``: building an sdist runs the package's own code). docs/security.md.

A build that fails is the version's failed proof; its cause is uv's own reason cut to the lines a
person needs (``resolver_reason``): "No solution found ... Because there is no version of
roman==99.0 ...", never Ray's traceback around it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from serving.pip_settings import config_files as pip_config_files
from serving.pip_settings import uv_index as index_settings
from wire.redaction import redact
from wire.routing_table import EnvironmentSpec

# Named actors live in a namespace per serving app, so two apps on one cluster never let go of
# each other's environments.
NAMESPACE_PREFIX = "sigserve-"
ACTOR_PREFIX = "sigserve-env-"
# 64 bits of the digest: names stay short and distinct.
_NAME_DIGEST_CHARS = 16
_REASON_LIMIT = 400


# Names of variables that hold credentials: kept from builds and host processes (``tool_env``).
_CREDENTIAL_NAME = re.compile(
    r"TOKEN|SECRET|PASSW|CREDENTIAL|ACCESS_KEY|CONNECTION_STRING|API_KEY|PRIVATE_KEY|_AUTH|"
    r"^MLFLOW_TRACKING_USERNAME$"
)


# The settings of environments read here (``setting``): forwarded to every environment's actor.
SETTINGS = (
    "SIGSERVE_ENVIRONMENT_IDLE_TTL_S",
    "SIGSERVE_ENVIRONMENT_HOST_MAX_RESTARTS",
    "SIGSERVE_ENVIRONMENT_HOST_RESTART_WINDOW_S",
)


def setting(name: str, default: float) -> float:
    """A number from the environment (a serving setting of environments), else ``default``."""
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


def child_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What a process running a version's model in an environment of its own inherits: not the
    credentials (the actor downloaded the artifact; the model needs none of the registry's)."""
    return {k: v for k, v in environ.items() if not _CREDENTIAL_NAME.search(k.upper())}


def tool_env(environ: Mapping[str, str], variables: Mapping[str, str]) -> dict[str, str]:
    """uv's environment for a build: ``child_env`` (building an sdist runs its ``setup.py``),
    uv's own ``UV_*`` variables, and the index ``variables``."""
    env = child_env(environ)
    env.update({k: v for k, v in environ.items() if k.startswith("UV_")})
    return {**env, **variables, "NO_COLOR": "1"}


class EnvironmentBuildFailed(Exception):
    """The environment could not be built; ``cause`` is what a person needs to know (never a
    credential: it reaches the controller, and a problem answer)."""

    def __init__(self, cause: str) -> None:
        cause = redact(cause)
        super().__init__(cause)
        self.cause = cause


def actor_name(digest: str) -> str:
    return ACTOR_PREFIX + digest[:_NAME_DIGEST_CHARS]


def namespace(app_name: str) -> str:
    return NAMESPACE_PREFIX + app_name


def machine_index_settings() -> tuple[list[str], dict[str, str]]:
    """``index_settings`` of this process's environment and pip's files on this machine."""
    files = pip_config_files(os.environ, Path.home(), Path(sys.prefix))
    return index_settings(os.environ, files)


def runtime_env(
    spec: EnvironmentSpec,
    *,
    timeout_s: float,
    index: tuple[list[str], dict[str, str]],
    env_vars: Mapping[str, str],
) -> dict[str, Any]:
    """The Ray ``runtime_env`` of a ``layered`` environment."""
    options, variables = index
    return {
        # Ray's uv plugin: a clone of the serving venv, then `uv pip install -r` these lines.
        # Options replace Ray's default `--no-cache` (even empty): uv's cache makes a second
        # node's build of the same lines, or a rebuild after a restart, cheaper.
        "uv": {"packages": list(spec.requirements), "uv_pip_install_options": options},
        "env_vars": {**env_vars, **variables},
        "config": {"setup_timeout_seconds": max(1, int(timeout_s))},
    }


# uv's own lines: "error: No solution found when resolving dependencies",
# "  cause: Because there is no version of roman==99.0 ..." (on a terminal the marks are
# U+00D7 and U+2570 U+2500 U+25B6).
_UV_LINE = re.compile(
    "^\\s*(?:\u00d7|\u2570\u2500\u25b6|error:|cause:|hint:|Caused by:|help:)\\s*(.*)$"
)
_NOISE = re.compile(r"^(Traceback|\s+File |ray\.|RuntimeError|subprocess|\s*raise |\s*\^)")


def resolve(
    spec: EnvironmentSpec, index: tuple[list[str], dict[str, str]], timeout_s: float
) -> None:
    """Resolve ``spec``'s lines against the serving environment without installing anything
    (``uv pip install --dry-run``, ~1 s); ``EnvironmentBuildFailed`` with uv's reason.

    Before Ray is asked: Ray's runtime-env agent clones the venv before it runs uv and tries a
    failed setup three times, so a requirement that does not resolve took 193 s to fail there
    (measured), against about a second here.
    """
    options, variables = index
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="sigserve-env-") as lines:
        lines.write("\n".join(spec.requirements) + "\n")
        lines.flush()
        command = [sys.executable, "-m", "uv", "pip", "install", "--dry-run", "--quiet",
                   "--python", sys.executable, *options, "-r", lines.name]  # fmt: skip
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, check=False,
                env=tool_env(os.environ, variables),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise EnvironmentBuildFailed(
                f"its environment ({named(spec.requirements)}) could not be resolved within "
                f"{timeout_s:g} s (SIGSERVE_ENVIRONMENT_BUILD_TIMEOUT_S)"
            ) from None
    if done.returncode != 0:
        raise EnvironmentBuildFailed(resolver_reason(done.stderr + done.stdout, spec.requirements))


def resolver_reason(text: str, requirements: Sequence[str]) -> str:
    """What a person needs of a failed build's output: uv's reason, in one or two lines."""
    lines = [line.rstrip() for line in text.splitlines()]
    found: list[str] = []
    for index, line in enumerate(lines):
        match = _UV_LINE.match(line)
        if not match or not match.group(1).strip():
            continue
        part = match.group(1).strip()
        # uv wraps a long reason onto indented lines that follow it.
        for more in lines[index + 1 :]:
            if not more.startswith("      ") or _UV_LINE.match(more):
                break
            part += " " + more.strip()
        if part not in found:
            found.append(part)
    if not found:
        last = [line.strip() for line in lines if line.strip() and not _NOISE.match(line)]
        found = last[-1:] or ["the build failed without a reason"]
    reason = redact(": ".join(found[:2]).replace("::", ":"))
    return f"its environment ({named(requirements)}) could not be built: {reason}"[:_REASON_LIMIT]


def named(requirements: Sequence[str]) -> str:
    """The requirement lines as a log line or a cause names them (credentials hidden)."""
    return redact(", ".join(requirements)) or "no requirements"

"""Docker and compose as the check runs them: the one subprocess wrapper, a daemon and a
compose command made available, and what docker knows about an image or a compose project."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from compose_output import CheckFailed, ok, say

REPO = Path(__file__).resolve().parents[2]
# The machine's shared tooling: it installs and starts a docker daemon, and builds the stand-in
# base image, where neither is there yet.
SHARED_BASE_SCRIPT = REPO.parent / "shared" / "tools" / "local-base-image.sh"


def run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv,
        env=env,
        text=True,
        capture_output=capture,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip()[-3000:] if capture else ""
        raise CheckFailed(f"`{' '.join(argv)}` exited {result.returncode}\n{detail}")
    return result


def ensure_docker() -> None:
    if shutil.which("docker") and run(["docker", "info"], check=False).returncode == 0:
        ok("docker daemon answers")
        return
    if not SHARED_BASE_SCRIPT.is_file():
        raise CheckFailed("no docker daemon answers (and no shared script to start one)")
    say(f"  no docker daemon answers: {SHARED_BASE_SCRIPT.name} installs and starts one")
    run(["bash", str(SHARED_BASE_SCRIPT)], capture=False)
    run(["docker", "info"])
    ok("docker daemon started")


def compose_command() -> list[str]:
    if run(["docker", "compose", "version"], check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise CheckFailed("neither `docker compose` nor `docker-compose` is installed")
        say("  installing Debian's docker-compose")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "install", "-y", "-q", "docker-compose"], env=env, timeout=600)
    return ["docker-compose"]


def image_exists(tag: str) -> bool:
    return run(["docker", "image", "inspect", tag], check=False).returncode == 0


def image_size_mb(tag: str) -> float:
    out = run(["docker", "image", "inspect", "-f", "{{.Size}}", tag]).stdout.strip()
    return int(out) / 1e6


def project_filter(project: str) -> list[str]:
    """The ``--filter`` of ``docker ps`` / ``docker volume ls`` for one compose project's things."""
    return ["--filter", f"label=com.docker.compose.project={project}"]

"""The images the demo runs: the base image, the wheelhouse the builds install from, and
``compose build`` itself."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from compose_docker import REPO, SHARED_BASE_SCRIPT, image_exists, run
from compose_output import CheckFailed, ok
from compose_stack import Stack

WHEELHOUSE_SCRIPT = REPO / "deploy" / "compose" / "wheelhouse.sh"
LOCAL_BASE = "sigserve-local/python:3.11"
APP_IMAGE = "sigserve:compose-check"
POSTGRES_IMAGE = "sigserve-postgres:compose-check"


def ensure_base_image(tag: str) -> None:
    if image_exists(tag):
        ok(f"base image {tag} present")
        return
    if tag != LOCAL_BASE:
        ok(f"base image {tag} will be pulled by the build")
        return
    if not SHARED_BASE_SCRIPT.is_file():
        raise CheckFailed(f"{tag} is missing and {SHARED_BASE_SCRIPT} is not there to build it")
    run(["bash", str(SHARED_BASE_SCRIPT), tag], capture=False, timeout=1800)
    ok(f"base image {tag} built")


def ensure_wheelhouse(directory: Path) -> None:
    """Fill ``directory`` unless it was filled for this very requirements.lock."""
    stamp = directory / ".filled-for"
    digest = hashlib.sha256(
        (REPO / "requirements.lock").read_bytes() + WHEELHOUSE_SCRIPT.read_bytes()
    ).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == digest:
        ok(f"wheelhouse {directory.name}/ is current ({len(list(directory.glob('*.whl')))} wheels)")
        return
    python = REPO / ".venv" / "bin" / "python"
    env = {**os.environ, **({"PYTHON": str(python)} if python.exists() else {})}
    run(["bash", str(WHEELHOUSE_SCRIPT), str(directory)], env=env, capture=False, timeout=3600)
    stamp.write_text(digest + "\n")
    ok(f"wheelhouse {directory.name}/ filled")


def build_images(stack: Stack, *, cold: bool) -> float:
    """``compose build`` of the stack's images; how long it took."""
    started = time.monotonic()
    out = stack.run("build", *(["--no-cache"] if cold else []), timeout=3600)
    build_s = time.monotonic() - started
    steps, cached = len(re.findall(r"^Step \d+/", out, re.M)), out.count("Using cache")
    layers = f"; {cached} of {steps} steps from the layer cache" if steps else ""
    ok(f"images built in {build_s:.1f} s ({'--no-cache' if cold else 'warm'}{layers})")
    return build_s

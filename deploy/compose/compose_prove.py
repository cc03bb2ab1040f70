"""`sigserve check --prove` against the compose stack, from the host, as the README tells a user
to run it: the controller container reaches the serving app on the Ray containers through the
controller proxy's unpublished port 8001 (``SIGSERVE_SERVING_URL``) and a replica loads and calls
the artifact on its input example. The demo's v2 (live) must be proven on a replica: the demo
logs no input examples (``sigserve.demo.register``), so its proof loads it there and calls
nothing (``not_exercised``, exit 0); v3 (its contract breaks v1's clients) must be refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from compose_output import expect, ok
from compose_scenario import MODEL
from compose_stack import Stack

# The CLI of the venv this check runs in (``make compose-check`` runs it with .venv's python).
SIGSERVE = str(Path(sys.executable).with_name("sigserve"))
# Above the CLI's own wait with --prove (630 s): the CLI must time out first, and say why.
TIMEOUT_S = 700


def check(stack: Stack, version: str) -> tuple[int, dict[str, Any], float]:
    """``sigserve check models:/MODEL/version --model MODEL --prove --json``: exit code, its
    answer and how long it took."""
    env = {**os.environ, "SIGSERVE_CONTROLLER_URL": stack.controller,
           "SIGSERVE_ADMIN_TOKEN": stack.token}  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(
        [SIGSERVE, "check", f"models:/{MODEL}/{version}", "--model", MODEL, "--prove", "--json"],
        env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    try:
        answer: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        answer = {"stdout": done.stdout[-500:], "stderr": done.stderr[-500:]}
    return done.returncode, answer, elapsed


def prove_from_host(stack: Stack) -> None:
    code, answer, elapsed = check(stack, "2")
    proof = answer.get("proof") or {}
    expect(
        code == 0
        and answer.get("verdict") == "live"
        and proof.get("outcome") in ("passed", "not_exercised")
        and bool(proof.get("replica")),
        f"check --prove of v2: exit {code}, {answer}",
    )
    stack.figures["prove_s"] = elapsed
    ok(
        f"check --prove of v2: exit 0, would go live, proof {proof['outcome']} on replica "
        f"{proof.get('replica')!r} in {proof.get('elapsed_ms')} ms ({elapsed:.1f} s in all)"
    )
    code, answer, _ = check(stack, "3")
    expect(
        code == 1 and answer.get("verdict") == "quarantined" and bool(answer.get("reasons")),
        f"check --prove of v3: exit {code}, {answer}",
    )
    ok(f"check --prove of v3: exit 1, would be quarantined: {answer['reasons'][0]!r}")

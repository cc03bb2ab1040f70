"""No secret in any log line: the logs of this session's stack (mlflow server, controller, Ray's
serving replicas), read after the other integration files ran (pytest runs files in name order,
so this one comes after them)."""

from __future__ import annotations

from pathlib import Path

from sigserve.stack import Secrets, ray_temp_dir
from tests.integration.conftest import ControllerHandle, register_echo, serve_status, wait_for


def test_no_secret_appears_in_any_log(
    home: Path, secrets: Secrets, serving_url: str, ctl: ControllerHandle
) -> None:
    # Make sure every part has logged at least one full path: registration, webhook, decision,
    # load, answer, and an admin call that carries the token.
    register_echo("secrets_echo", tag="one")
    wait_for(lambda: serve_status(serving_url, "secrets_echo").status_code == 200, 60)
    ctl.model("secrets_echo")
    logs = [p for root in (home / "logs", ray_temp_dir(home)) if root.exists()
            for p in root.rglob("*") if p.is_file() and p.suffix in {".log", ".out", ".err"}]
    assert any(p.name.startswith("controller") for p in logs), logs[:5]
    assert any("serve" in str(p) for p in logs), "Ray Serve's replica logs were read"
    leaks = {
        name: [str(p) for p in logs if value.encode() in p.read_bytes()]
        for name, value in secrets.__dict__.items()
    }
    assert leaks == {name: [] for name in secrets.__dict__}

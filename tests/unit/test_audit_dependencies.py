"""``make audit`` never passes with nothing checked (scripts/audit_dependencies.py), on a
stand-in pip-audit that answers what the real one answers when its database is out of reach."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "audit_dependencies.py"


def audit(tmp_path: Path, report: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "pip-audit"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(report)}\nEOF\n")
    fake.chmod(0o755)
    return subprocess.run([sys.executable, str(SCRIPT), str(fake), "requirements.lock"],
                          capture_output=True, text=True, check=False)  # fmt: skip


def test_an_unreachable_database_is_a_failure_not_a_clean_audit(tmp_path: Path) -> None:
    # What pip-audit 2.10 reports (and exits 0 with) when PyPI's vulnerability API is absent.
    skipped = {"dependencies": [
        {"name": "httpx", "skip_reason": "Dependency not found on PyPI and could not be audited"},
        {"name": "ray", "version": "2.60.0", "vulns": []},
    ], "fixes": []}  # fmt: skip
    done = audit(tmp_path, skipped)
    assert done.returncode == 2
    assert "1 packages could NOT be checked" in done.stderr


@pytest.mark.parametrize(
    ("vulns", "code"), [([], 0), ([{"id": "GHSA-x", "fix_versions": ["9"]}], 1)]
)
def test_a_full_audit_fails_only_on_a_known_vulnerability(
    tmp_path: Path, vulns: list[dict[str, Any]], code: int
) -> None:
    done = audit(tmp_path, {"dependencies": [{"name": "ray", "version": "2.60.0", "vulns": vulns}]})
    assert done.returncode == code
    assert "1 of 1 locked packages checked" in done.stdout
    if vulns:
        assert "ray 2.60.0: GHSA-x (fixed in 9)" in done.stdout

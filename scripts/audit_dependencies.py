"""``make audit``: every locked dependency checked against a vulnerability database, or a failure.

pip-audit (run from a venv of its own, so its dependencies stay out of the lock) asks PyPI's
vulnerability API, or OSV with ``AUDIT_SERVICE=osv``, about each pin of ``requirements.lock``.
Where that database cannot be reached, pip-audit skips every package, says "No known
vulnerabilities found" and exits 0: here that is a failure, naming how many packages went
unchecked, so an audit that checked nothing never reads as a pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    pip_audit = Path(sys.argv[1])
    lock = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("requirements.lock")
    service = os.environ.get("AUDIT_SERVICE", "pypi")
    done = subprocess.run(
        [str(pip_audit), "-r", str(lock), "--no-deps", "--disable-pip", "-s", service,
         "--progress-spinner", "off", "-f", "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        report = json.loads(done.stdout)
    except ValueError:
        print(f"audit: pip-audit gave no report (exit {done.returncode}):", file=sys.stderr)
        print(done.stderr.strip()[-2000:], file=sys.stderr)
        return 2
    packages = report["dependencies"]
    skipped = [p for p in packages if p.get("skip_reason")]
    vulnerable = [p for p in packages if p.get("vulns")]
    for p in vulnerable:
        for v in p["vulns"]:
            fixed = ", ".join(v.get("fix_versions", [])) or "no fix yet"
            print(f"{p['name']} {p.get('version', '')}: {v['id']} (fixed in {fixed})")
    checked = len(packages) - len(skipped)
    print(f"audit: {checked} of {len(packages)} locked packages checked against {service}; "
          f"{len(vulnerable)} with known vulnerabilities")
    if skipped:
        print(f"audit: {len(skipped)} packages could NOT be checked (is the {service} "
              f"vulnerability database reachable from here?), e.g. {skipped[0]['skip_reason']}",
              file=sys.stderr)
        return 2
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())

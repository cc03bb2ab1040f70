#!/usr/bin/env bash
# Fill a wheelhouse for building the compose images without PyPI (docker build --build-arg
# WHEELHOUSE=wheelhouse): every package of requirements.lock at its pinned version and the
# build backend (setuptools).
# Usage: deploy/compose/wheelhouse.sh [DIR]   (default: ./wheelhouse at the repository's top)
# Runs on the host, with a Python 3.11 on Linux x86_64 like the images' (PYTHON=... to choose).
# torch is pinned in the lock (torch==2.13.0): pip takes the CPU build where one lies on disk.
# Files already in DIR are kept; a second run downloads only what changed in the lock.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dest=${1:-$repo/wheelhouse}
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then python=$repo/.venv/bin/python; else python=python3.11; fi
fi
"$python" - <<'PY'
import platform, sys
if sys.version_info[:2] != (3, 11) or platform.system() != "Linux" or platform.machine() != "x86_64":
    sys.exit(f"wheelhouse.sh needs Python 3.11 on Linux x86_64 (the images' platform), "
             f"not {platform.python_version()} on {platform.system()} {platform.machine()}")
PY
mkdir -p "$dest"
"$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
  --dest "$dest" \
  -c "$repo/requirements.lock" \
  -r "$repo/requirements.lock" \
  'setuptools>=69'
echo "wheelhouse: $(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest"

"""A replica that dies leaves its downloads behind; the next replica's first load removes them
(serving/model_dirs.py). Seen: 1.2 GB of model directories left in /tmp by a day of test runs."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from serving import model_dirs


@pytest.fixture(autouse=True)
def tmp_is_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(model_dirs, "_swept_for", None)
    return tmp_path


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def test_a_dead_replicas_downloads_go_and_a_live_ones_stay(tmp_path: Path) -> None:
    dead = tmp_path / f"sigserve-models-{_dead_pid()}"
    (dead / "model-abc").mkdir(parents=True)
    (dead / "model-abc" / "model.pkl").write_bytes(b"x" * 1024)
    alive = tmp_path / "sigserve-models-1"  # init: alive, and not ours to signal or not
    (alive / "model-def").mkdir(parents=True)
    older = tmp_path / "sigserve-model-xyz"  # an older release's: no pid to go by
    older.mkdir()

    first = model_dirs.new_model_dir()
    assert first.is_dir() and not any(first.iterdir())
    assert not dead.exists()
    assert alive.exists() and older.exists()
    second = model_dirs.new_model_dir()
    assert second != first and first.parent == second.parent
    assert first.parent.stat().st_mode & 0o777 == 0o700

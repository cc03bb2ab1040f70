"""The fault-injection seam (``controller.faults``): inert unless set; when set, the process dies
by SIGKILL at the named point, and a transaction it was in leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from controller import faults
from controller.database import make_engine, migrate
from controller.records import ModelRecord
from controller.store import Store


def test_the_seam_is_inert_unless_it_names_this_point_and_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    killed: list[int] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append(sig))
    monkeypatch.delenv(faults.KILL_AT_ENV, raising=False)
    faults.kill_at("in_transaction", "m")
    monkeypatch.setenv(faults.KILL_AT_ENV, "committed:m")
    faults.kill_at("in_transaction", "m")
    monkeypatch.setenv(faults.KILL_AT_ENV, "in_transaction:other")
    faults.kill_at("in_transaction", "m")
    assert killed == []
    monkeypatch.setenv(faults.KILL_AT_ENV, "in_transaction:m")
    faults.kill_at("in_transaction", "m")
    monkeypatch.setenv(faults.KILL_AT_ENV, "in_transaction")  # any model
    faults.kill_at("in_transaction", "x:y")
    assert killed == [signal.SIGKILL, signal.SIGKILL]


def test_a_process_killed_inside_a_write_transaction_leaves_the_record_as_it_was(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    engine = make_engine(url)
    migrate(engine)
    store = Store(engine)
    store.update_model("m", lambda _: ModelRecord(name="m", policy="backward"))
    events = store.events("m", limit=100)
    script = textwrap.dedent(f"""
        from dataclasses import replace
        from controller.database import make_engine
        from controller.store import Store
        store = Store(make_engine({url!r}))
        store.update_model("m", lambda r: replace(r, policy="none", default_version="7"))
        print("not killed")
    """)
    env = {**os.environ, faults.KILL_AT_ENV: "in_transaction:m"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert b"not killed" not in done.stdout
    after = Store(make_engine(url))
    assert after.load_model("m") == ModelRecord(name="m", policy="backward")
    assert after.events("m", limit=100) == events

"""Environments of a version's own over time (issue 17): an isolated host process that dies is
started again, within bounds; an environment nobody touches goes by itself. Real processes
(the host process runs in the serving venv, as the other unit tests of environments do), real
MLflow models on disk; the clock is injected where a bound is counted in minutes."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from serving.environment_errors import HostUnavailable
from serving.environment_host import EnvironmentHost
from serving.environment_isolated import ModelProcess
from serving.loader import LoadFailed
from tests.unit.test_serving_environments import (
    ISOLATED,
    NUMERALS_CODE,
    entry_for,
    held,
    target_of,
)


def isolated_host(**kwargs: object) -> EnvironmentHost:
    # A venv built beforehand: the serving venv itself (it has MLflow and pyarrow).
    return EnvironmentHost(ISOLATED.digest, {"spec": ISOLATED.model_dump(mode="json"),
                                             "index": [[], {}], "timeout_s": 60,
                                             "venv": sys.prefix}, **kwargs)  # type: ignore[arg-type]  # fmt: skip


def kill(process: ModelProcess) -> int:
    """SIGKILL the host process (as the OOM killer does) and wait until it is gone: a process
    with threads reads as a zombie before ``waitpid`` can tell its end."""
    pid = process.pid
    os.kill(pid, signal.SIGKILL)
    while process._process.poll() is None:
        time.sleep(0.01)
    return pid


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_host_process_that_keeps_dying_is_broken_for_the_window_then_tried_again() -> None:
    clock = Clock()
    process = ModelProcess(Path(sys.prefix), max_restarts=2, window_s=300, backoff_s=1,
                           max_backoff_s=30, clock=clock)  # fmt: skip

    def killed() -> None:
        kill(process)

    assert "python" in process.call({"op": "ping"})
    killed()
    assert "python" in process.call({"op": "ping"})  # the first restart: at once
    killed()
    with pytest.raises(HostUnavailable, match=r"started again in 1\.0 s"):
        process.call({"op": "ping"})  # the second waits its backoff
    clock.now += 1
    assert "python" in process.call({"op": "ping"})
    killed()
    clock.now += 60
    with pytest.raises(HostUnavailable, match="started again 2 times within 300 s: the "
                       "environment is broken, not started again for 239 s"):  # fmt: skip
        process.call({"op": "ping"})
    assert process.broken is not None and "killed by SIGKILL" in process.broken
    clock.now += 240  # the first restart leaves the window
    assert "python" in process.call({"op": "ping"}) and process.broken is None
    process.close()


def test_a_broken_host_answers_loads_with_the_cause_not_a_load_of_the_artifact(
    tmp_path: Path,
) -> None:
    code = tmp_path / "numerals_code.py"
    code.write_text(NUMERALS_CODE)
    entry = entry_for(tmp_path, "numerals", str(code))
    target = target_of("numerals", entry.model_copy(update={"environment": ISOLATED}))
    host = isolated_host()
    host._process._max_restarts = 0  # broken at the first exit
    kill(host._process)
    with pytest.raises(LoadFailed, match="the environment is broken") as failed:
        held(host, target.artifact, "r")
    assert not failed.value.permanent  # the replica's 503, never a quarantine of the version
    assert "broken" in (host.info()["broken"] or "")

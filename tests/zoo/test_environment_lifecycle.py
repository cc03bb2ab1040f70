"""Environments of a version's own over time (issue 17), with their real cost: an isolated
host process killed (as the OOM killer kills) is started again by the next call, its model
loaded again there before the call is answered; a call in flight when it dies is a 503.

In the zoo: each restart imports MLflow again in the host process (~6 s measured on the
2-core CI machine), over what ``make test`` allows; the bounds of restarts are unit-tested
without a model (tests/unit/test_serving_environment_lifecycle.py).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from serving.environment_host import EnvironmentHost, EnvironmentUnavailable
from serving.environment_isolated import ModelProcess
from tests.unit.test_serving_environments import (
    ISOLATED,
    NUMERALS_CODE,
    entry_for,
    held,
    target_of,
)
from tests.zoo.conftest import Figures

# Dies as the OOM killer kills: SIGKILL, on the input 0.
DIES_ON_ZERO = NUMERALS_CODE.replace(
    '        table = {3: "III", 14: "XIV", 5: "V"}\n',
    '        table = {3: "III", 14: "XIV", 5: "V"}\n'
    "        import os, signal\n"
    '        if int(model_input["n"][0]) == 0:\n'
    "            os.kill(os.getpid(), signal.SIGKILL)\n",
)


def isolated_host() -> EnvironmentHost:
    # A venv built beforehand: the serving venv itself (it has MLflow and pyarrow).
    return EnvironmentHost(ISOLATED.digest, {"spec": ISOLATED.model_dump(mode="json"),
                                             "index": [[], {}], "timeout_s": 60,
                                             "venv": sys.prefix})  # fmt: skip


def kill(process: ModelProcess) -> int:
    """SIGKILL the host process and wait until it is gone: a process with threads reads as a
    zombie before ``waitpid`` can tell its end."""
    pid = process.pid
    os.kill(pid, signal.SIGKILL)
    while process._process.poll() is None:
        time.sleep(0.01)
    return pid


def test_a_killed_host_process_is_started_again_by_the_next_call_with_its_models(
    tmp_path: Path, figures: Figures
) -> None:
    code = tmp_path / "dies_code.py"
    code.write_text(DIES_ON_ZERO)
    entry = entry_for(tmp_path, "numerals", str(code))
    target = target_of("numerals", entry.model_copy(update={"environment": ISOLATED}))
    host = isolated_host()
    loaded = held(host, target.artifact, "r")
    first = kill(host._process)  # killed from outside, between calls
    started = time.perf_counter()
    answer = loaded.model.predict(pd.DataFrame({"n": [14]}))
    restart_s = time.perf_counter() - started
    pd.testing.assert_frame_equal(answer, pd.DataFrame({"answer": ["XIV"]}))
    assert host._process.pid != first and host.info()["restarts"] == 1
    figures("restart of a killed host process, its model loaded again (s)", restart_s)

    # Killed while answering: that call is a 503 naming the kill, never the model's 500 ...
    with pytest.raises(EnvironmentUnavailable, match=r"exited while answering \(killed by SIGKILL"
                       ) as down:  # fmt: skip
        loaded.model.predict(pd.DataFrame({"n": [0]}))
    assert down.value.status == 503 and isinstance(down.value, ConnectionError)
    # ... and the next call, one backoff later, is answered by a new process.
    time.sleep(1.0)
    answer = loaded.model.predict(pd.DataFrame({"n": [3]}))
    pd.testing.assert_frame_equal(answer, pd.DataFrame({"answer": ["III"]}))
    assert host.info()["restarts"] == 2 and host.info()["broken"] is None
    loaded.close()
    host._process.close()

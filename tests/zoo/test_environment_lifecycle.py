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

from serving.environment_errors import EnvironmentUnavailable
from serving.environment_host import EnvironmentHost
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

    # A model that cannot be loaded again in the new process (its files gone here): a 503 that
    # says so, never the host's KeyError as the model's 500.
    import shutil

    shutil.rmtree(host._process._loaded[target.artifact.key])
    kill(host._process)
    time.sleep(2.0)  # the third restart's backoff
    with pytest.raises(EnvironmentUnavailable, match="could not be loaded again"):
        loaded.model.predict(pd.DataFrame({"n": [3]}))
    loaded.close()
    host._process.close()


def test_an_environment_no_replica_touches_goes_by_itself_on_ray(
    serving_url: str, figures: Figures
) -> None:
    """The session's real Ray: a replica (a manager) that touches an environment keeps it past
    its idle TTL; once nothing touches it, its actor kills itself and its name is free."""
    import asyncio
    import hashlib
    import uuid

    import ray

    from serving.environment_builds import actor_name, namespace
    from serving.environments import EnvironmentManager
    from wire.routing_table import EnvironmentSpec, ModelEntry, RoutingTable, VersionEntry

    # The requirements of tests/zoo/test_own_environment.py: Ray's cached clone, no new build.
    lines = ["roman==5.2"]
    digest = hashlib.sha256("\n".join(["layered", *lines, uuid.uuid4().hex]).encode()).hexdigest()
    spec = EnvironmentSpec(digest=digest, kind="layered", requirements=lines, reason="needs roman")
    entry = VersionEntry(version="1", state="live", source="file:///nowhere",
                         mlmodel_digest="0" * 64, environment=spec)  # fmt: skip
    table = RoutingTable(revision=1, models={"m": ModelEntry(
        name="m", default_version="1", versions={"1": entry})})  # fmt: skip
    app, ttl = f"idle-{uuid.uuid4().hex[:6]}", 4.0

    def exists() -> bool:
        try:
            ray.get_actor(actor_name(digest), namespace=namespace(app))
        except ValueError:
            return False
        return True

    def gone_within(limit_s: float) -> None:
        began = time.perf_counter()
        while exists() and time.perf_counter() - began < limit_s:
            time.sleep(0.1)

    async def scenario() -> dict[str, float | bool]:
        replica = EnvironmentManager(app, timeout_s=600, concurrency=1, idle_ttl_s=ttl)
        replica.offer(table)
        await replica.build(spec)
        await asyncio.sleep(2.5 * ttl)
        kept = await asyncio.to_thread(exists)
        await replica.close()  # the last replica goes: nothing touches it now
        stopped = time.perf_counter()
        await asyncio.to_thread(gone_within, 10 * ttl)
        return {"kept": kept, "gone_s": time.perf_counter() - stopped,
                "gone": not await asyncio.to_thread(exists)}  # fmt: skip

    seen = asyncio.run(scenario())
    figures(f"idle environment gone after its last touch, TTL {ttl:g} s (s)", seen["gone_s"])
    assert seen["kept"], "an environment a replica touches went"
    assert seen["gone"], "an environment nobody touches was left running"


STREAMS_CODE = """
import mlflow
import pandas as pd


class Counts(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"answer": ["III"] * len(model_input)})

    def predict_stream(self, context, model_input, params=None):
        for n in range(int(model_input["n"])):
            yield f"chunk {n}"


mlflow.models.set_model(Counts())
"""


def test_a_model_in_an_environment_that_inherits_nothing_streams_from_its_host_process(
    tmp_path: Path,
) -> None:
    from serving.environment_errors import raise_error
    from serving.environment_host import artifact_record, loaded_from

    code = tmp_path / "counts_code.py"
    code.write_text(STREAMS_CODE)
    entry = entry_for(tmp_path, "counts", str(code))
    target = target_of("counts", entry.model_copy(update={"environment": ISOLATED}))
    host = isolated_host()
    key = target.artifact.key
    answer = host.load(key, "r", artifact_record(target.artifact))
    if "error" in answer:
        raise_error(answer["error"])

    def call(method: str, *args: object) -> dict[str, object]:
        if method == "stream":
            args = (key, *args)
        result: dict[str, object] = getattr(host, method)(*args)
        return result

    loaded = loaded_from(answer["files"], lambda d, p: host.predict(key, d, p),
                         lambda: host.unload(key, "r"), call)  # fmt: skip
    chunks = list(loaded.model.predict_stream(pd.DataFrame({"n": [3]})))
    assert chunks == ["chunk 0", "chunk 1", "chunk 2"]
    left = loaded.model.predict_stream(pd.DataFrame({"n": [9]}))
    assert next(left) == "chunk 0"
    left.close()  # the client left: the host process closes the model's generator
    assert host._streams == {}
    loaded.close()
    host._process.close()

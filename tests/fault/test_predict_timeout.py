"""A predict that hangs, on the real stack (issue 15): a real ``mlflow server``, the controller,
Ray Serve and HTTP, with a model whose predict sleeps 300 s when its input says so.

What ``docs/architecture.md`` ("A predict that hangs") promises, seen by a client: the hung call
is a 504 ``predict-timeout`` once the model's deadline (the tag ``sigserve.predict_timeout_s``)
has passed; its version then answers 503 ``version-wedged`` with ``Retry-After`` at once; other
models keep answering; and a replica with more hung calls than ``SIGSERVE_MAX_WEDGED_PREDICTS``
fails its health check, so that Ray Serve replaces it with one on which every version takes work
again.

Ray checks a replica's health every ``health_check_period_s`` (10 s by default) and replaces it
after 3 failed checks in a row (``REPLICA_HEALTH_CHECK_UNHEALTHY_THRESHOLD``), so the
replacement takes some 30 s of the test; the figures say how long exactly.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.server import replica_log_path
from serving.settings import ServingSettings
from tests.fault.conftest import Figures, Poller
from tests.integration.conftest import (
    ControllerHandle,
    problem,
    register_echo,
    serve_status,
    server_call,
    wait_for,
)

pytestmark = pytest.mark.integration

SLEEPY = Path(__file__).parent / "models" / "sleepy.py"
PREDICT_TIMEOUT_TAG = "sigserve.predict_timeout_s"  # controller/registry_sync.py
TIMEOUT_S = 2.0
# A 504 comes this long after the deadline at most: the HTTP hops and the event loop's turn.
SLACK_S = 1.5
# "At once": what a refusal that waits on nothing takes, with room for a loaded machine.
AT_ONCE_S = 1.0
# The serving app's own limit, as the session's stack read it from the environment.
MAX_WEDGED = ServingSettings().max_wedged_predicts


def register_sleepy(name: str, tag: str) -> str:
    """Log and register a version of the sleepy model; returns its version number."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SLEEPY),
            signature=infer_signature(
                pd.DataFrame({"prompt": ["x"]}), pd.DataFrame({"answer": ["x"]})
            ),
            model_config={"tag": tag},
            pip_requirements=[],
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def routing_entry(ctl: ControllerHandle, name: str) -> tuple[int, dict[str, Any] | None]:
    """The controller's routing table's revision, and its entry for ``name``."""
    r = httpx.get(
        f"{ctl.url}/routing-table",
        params={"after": -1},
        headers={"Authorization": f"Bearer {ctl.secrets.serving_token}"},
        timeout=10,
    )
    r.raise_for_status()
    table = r.json()
    return int(table["revision"]), table["models"].get(name)


def wait_served_with_deadline(
    ctl: ControllerHandle, url: str, name: str, versions: list[str]
) -> None:
    """Wait until the routing table gives ``name`` its deadline and ``versions`` are live in
    it, and the serving app holds that table (or a later one)."""

    def published() -> int | None:
        revision, model = routing_entry(ctl, name)
        if model is None or model.get("predict_timeout_s") != TIMEOUT_S:
            return None
        states = {v: e["state"] for v, e in model["versions"].items()}
        return revision if all(states.get(v) == "live" for v in versions) else None

    revision: int = wait_for(published, 60, 0.2)
    # /models, not /-/healthz: Ray Serve's proxy answers that path itself.
    wait_for(lambda: httpx.get(f"{url}/models", timeout=10).json()["revision"] >= revision,
             60, 0.2)  # fmt: skip


def serving_replicas() -> set[str]:
    """The serving deployment's replica ids (the last part of their actors' names)."""
    import ray

    named = ray.util.list_named_actors(all_namespaces=True)
    return {
        a["name"].rpartition("#")[2]
        for a in named
        if "Server" in a["name"] and "REPLICA" in a["name"]
    }


def controller_log() -> str:
    """What Ray Serve's controller logged this session (its health checks, replicas stopped)."""
    from ray.serve._private.logging_utils import get_serve_logs_dir

    logs = sorted(Path(get_serve_logs_dir()).glob("controller_*.log"))
    return "".join(path.read_text(errors="replace") for path in logs)


def timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_timed_out(response: httpx.Response, took: float, version: str) -> None:
    assert response.status_code == 504, response.text
    body = problem(response)
    assert body["type"].endswith(":predict-timeout"), body
    assert f"version {version} of 'hang'" in body["detail"], body
    assert TIMEOUT_S <= took < TIMEOUT_S + SLACK_S, took


def assert_wedged(response: httpx.Response, took: float) -> None:
    assert response.status_code == 503, response.text
    body = problem(response)
    assert body["type"].endswith(":version-wedged"), body
    assert int(response.headers["retry-after"]) > 0
    assert took < AT_ONCE_S, took


def test_a_hung_predict_is_a_504_and_enough_of_them_replace_the_replica(
    serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    from mlflow import MlflowClient

    name = "hang"
    # The deadline is there before the first version: no call of it ever runs under another.
    MlflowClient(ctl.tracking_uri).create_registered_model(
        name, tags={PREDICT_TIMEOUT_TAG: f"{TIMEOUT_S:g}"}
    )
    assert register_sleepy(name, "v1") == "1"
    register_echo("quick", tag="quick")
    wait_served_with_deadline(ctl, serving_url, name, ["1"])
    wait_for(lambda: serve_status(serving_url, "quick").status_code == 200, 60)
    old = serving_replicas()
    assert len(old) == 1, old
    # No call to hang before its sleeping one: a version that has answered fast may be called
    # on the event loop, where no deadline reaches (serving.batching).

    def ask_quick() -> httpx.Response:
        return httpx.post(f"{serving_url}/models/quick/serve", json={"prompt": "hi"}, timeout=30)

    with Poller(ask_quick, every_s=0.2) as quick:
        # 2. One hung call: a 504 at its deadline, its version 503 at once, quick unaffected.
        response, took = timed(lambda: serve_status(serving_url, name, "1", {"prompt": "sleep"}))
        figures("time to 504", took)
        assert_timed_out(response, took, "1")
        for version in (None, "1"):  # the default (version 1) and version 1 by path
            response, took = timed(lambda v=version: serve_status(serving_url, name, v))
            assert_wedged(response, took)
        time.sleep(1.0)  # some of quick's answers after the 504 too
        step2 = list(quick.answers)
        assert step2 and Counter(status for _, status, _ in step2) == {200: len(step2)}, step2
        figures("quick's answers while hang hung", len(step2), "x 200")
        figures("quick's slowest answer meanwhile", max(took for _, _, took in step2))

        # 3. One more hung call than the replica keeps: its health check fails, Ray replaces it.
        versions = ["1"]
        while len(versions) <= MAX_WEDGED:
            versions.append(register_sleepy(name, f"v{len(versions) + 1}"))
        wait_served_with_deadline(ctl, serving_url, name, versions)
        for version in versions[1:]:
            response, took = timed(
                lambda v=version: serve_status(serving_url, name, v, {"prompt": "sleep"})
            )
            assert_timed_out(response, took, version)
        last_hung = time.monotonic()
        assert serving_replicas() == old  # still up: the health check has yet to run

        new: set[str] = wait_for(lambda: (now := serving_replicas()) - old and not now & old
                                 and now, 180, 0.2)  # fmt: skip
        replaced_s = time.monotonic() - last_hung
        wait_for(lambda: ask_quick().status_code == 200, 60, 0.2)
        answering_s = time.monotonic() - last_hung
        gap = [(status, took) for sent, status, took in quick.answers if sent >= last_hung]

    figures("old replica gone, new one listed, after the last hung call", replaced_s)
    figures("new replica answering quick after the last hung call", answering_s)
    figures("quick's answers from the last hung call on", str(dict(Counter(s for s, _ in gap))), "")
    figures("quick's slowest answer meanwhile (the replicas' swap)", max(t for _, t in gap))
    figures("replica ids", f"{sorted(old)} -> {sorted(new)}", "")

    # On the new replica every version of hang takes work again, and quick answers.
    ok = serve_status(serving_url, "quick")
    assert ok.status_code == 200 and ok.json() == [{"answer": "quick:hi"}], ok.text
    for version in versions:
        response = serve_status(serving_url, name, version)
        assert response.status_code == 200, response.text
        assert response.json() == [{"answer": f"v{version}:hi"}]
    assert serving_replicas() == new

    # Replaced because its health check raised, for the hung calls, not for anything else; the
    # new replica logs to a file of its own id.
    (gone,) = old
    log = controller_log()
    assert re.search(rf"Replica\(id='{gone}'[^\n]*failed the health check", log), log[-3000:]
    hung = f"WedgedReplica: {len(versions)} predict calls are running past their deadline"
    assert hung in log, log[-3000:]
    (fresh,) = new
    assert replica_log_path("sigserve", fresh).is_file()

    # How the versions' calls are made on the new replica now that they answered fast: a call
    # made inline (on the event loop) is one no deadline reaches (serving.batching).
    for _ in range(5):
        assert serve_status(serving_url, name, "1").status_code == 200
    stats = {k: v for k, v in server_call("batch_stats").items() if k.startswith(f"{name}/1@")}
    for key, stat in stats.items():
        figures(
            f"{key}: calls, inline calls, time per row",
            (f"{stat['calls']}, {stat['inline']}, {stat['row_s'] * 1000:.2f} ms"),
            "",
        )


# asyncio's default executor on this machine (Python's ThreadPoolExecutor default): the replica's
# loads and evictions run there; hung predicts once filled it too and stalled the whole replica.
WORKER_THREADS = min(32, (os.cpu_count() or 1) + 4)
# A load of this small model takes about a second; its 504 may come this long after the deadline.
LOAD_SLACK_S = 15.0


def test_more_hung_calls_at_once_than_worker_threads_each_get_their_504(
    serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    from mlflow import MlflowClient

    name = "hang_many"
    MlflowClient(ctl.tracking_uri).create_registered_model(
        name, tags={PREDICT_TIMEOUT_TAG: f"{TIMEOUT_S:g}"}
    )
    versions = [register_sleepy(name, f"v{i + 1}") for i in range(WORKER_THREADS + 2)]
    register_echo("quick_many", tag="quick")
    wait_served_with_deadline(ctl, serving_url, name, versions)
    wait_for(lambda: serve_status(serving_url, "quick_many").status_code == 200, 60)
    old = serving_replicas()

    def ask_quick() -> httpx.Response:
        return httpx.post(
            f"{serving_url}/models/quick_many/serve", json={"prompt": "hi"}, timeout=90
        )

    def hang(version: str) -> tuple[int | str, str, float]:
        started = time.monotonic()
        try:
            r = httpx.post(
                f"{serving_url}/models/{name}/versions/{version}/serve",
                json={"prompt": "sleep"},
                timeout=90,
            )
            answer: tuple[int | str, str] = (r.status_code, r.headers.get("content-type", ""))
        except httpx.HTTPError as exc:
            answer = (type(exc).__name__, "")
        return (*answer, time.monotonic() - started)

    with Poller(ask_quick, every_s=0.2) as quick:
        started = time.monotonic()
        with ThreadPoolExecutor(len(versions)) as pool:
            answers = list(pool.map(hang, versions))
        # The replica is replaced either way (more than SIGSERVE_MAX_WEDGED_PREDICTS hung):
        # wait for it, so that the tests after this one find a replica that answers.
        wait_for(lambda: (now := serving_replicas()) - old and not now & old, 180, 0.2)
        replaced_s = time.monotonic() - started
        wait_for(lambda: ask_quick().status_code == 200, 60, 0.2)
    meanwhile = [(status, took) for sent, status, took in quick.answers if sent >= started]

    seen = Counter(f"{status} after {took:.0f}s" for status, _, took in answers)
    figures(f"{len(versions)} hung calls at once on {WORKER_THREADS} threads", str(seen), "")
    figures("replica replaced after", replaced_s)
    figures("quick's slowest answer meanwhile", max(took for _, took in meanwhile))
    for status, content_type, took in answers:
        assert status == 504 and content_type.startswith("application/problem+json"), answers
        assert took < TIMEOUT_S + LOAD_SLACK_S, answers
    assert all(status == 200 and took < 5.0 for status, took in meanwhile), meanwhile

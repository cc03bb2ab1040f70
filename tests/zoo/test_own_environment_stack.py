"""The whole path of a version that needs a package the shared serving environment lacks (issue
17), on the session's real stack (MLflow server, controller, Ray Serve, HTTP): registered from
code with ``pip_requirements=["roman==5.2"]``, its ``predict`` importing ``roman``, which the
serving venv does not have. The controller gives it an environment of its own ("building its
environment"); a replica builds it (``serving.environments``), proves the version there and the
version goes live, answering clients what ``roman.toRoman`` gives. A second version with the
same requirements is served from the same environment: no second build (one environment actor,
holding both).

In the zoo: the first build clones the serving venv (~18-40 s measured on the shared machine).
The isolated path (a venv that inherits nothing) is in ``make test``:
``tests/integration/test_environment_build.py``.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

from serving.environment_builds import ACTOR_PREFIX, namespace
from tests.integration.conftest import ControllerHandle, wait_for
from tests.zoo.conftest import Figures
from tests.zoo.held import post_json, registered_at

MODEL = Path(__file__).parent / "models" / "roman_numerals.py"
# roman.toRoman's documented answers.
EXPECTED = {1: "I", 4: "IV", 14: "XIV", 1994: "MCMXCIV", 2026: "MMXXVI"}
# A first build: resolving, cloning the serving venv, installing, then the proof.
BUILD_TIMEOUT_S = 300.0


def _register(name: str) -> str:
    import mlflow
    from mlflow.models import infer_signature

    example = pd.DataFrame({"n": [4, 14]})
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(MODEL), input_example=example,
            signature=infer_signature(example, pd.DataFrame({"numeral": ["IV", "XIV"]})),
            pip_requirements=["roman==5.2"], registered_model_name=name,
        )  # fmt: skip
    return str(info.registered_model_version)


def _live(ctl: ControllerHandle, name: str, version: str) -> dict[str, Any]:
    state = wait_for(lambda: ctl.state_of(name, version) in ("live", "quarantined")
                     and ctl.state_of(name, version), BUILD_TIMEOUT_S, 0.1)  # fmt: skip
    record: dict[str, Any] = next(v for v in ctl.model(name)["versions"] if v["version"] == version)
    assert state == "live", record
    return record


def _environments() -> dict[str, dict[str, Any]]:
    """The environment actors of the serving app, by name, with what each holds."""
    import ray
    from ray.util import list_named_actors

    found = {}
    for entry in list_named_actors(all_namespaces=True):
        if entry["namespace"] == namespace("sigserve") and entry["name"].startswith(ACTOR_PREFIX):
            actor = ray.get_actor(entry["name"], namespace=entry["namespace"])
            found[entry["name"]] = ray.get(actor.info.remote(), timeout=30)
    return found


def test_a_version_needing_roman_goes_live_from_its_own_environment_and_a_second_reuses_it(
    serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    import inspect

    import serving.server

    # Fail at once, not after the build timeout, where replicas build no environments.
    assert "EnvironmentManager(" in inspect.getsource(serving.server), (
        "serving/server.py does not wire serving.environments into the replica"
    )
    name = f"zoo_roman_{uuid.uuid4().hex[:6]}"
    body = [{"n": n} for n in EXPECTED]
    expected = [{"numeral": v} for v in EXPECTED.values()]
    before = _environments()

    version = _register(name)
    born = registered_at(name, version)
    _live(ctl, name, version)
    figures("registration -> live, first version", time.time() - born)
    send = post_json(body)
    first = wait_for(lambda: r if (r := send(f"{serving_url}/models/{name}/versions/{version}"
                                             "/serve")).status_code not in (404, 503) else None,
                     60, 0.05)  # fmt: skip
    figures("first answered request", first.elapsed.total_seconds())
    assert first.status_code == 200, first.text
    assert first.json() == expected

    second = _register(name)
    born = registered_at(name, second)
    _live(ctl, name, second)
    figures("registration -> live, environment reused", time.time() - born)
    answer = wait_for(lambda: r if (r := send(f"{serving_url}/models/{name}/versions/{second}"
                                              "/serve")).status_code not in (404, 503) else None,
                      60, 0.05)  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json() == expected

    # One environment for both versions, which loaded both: built here, or earlier in the
    # session by a test with the same requirements (environments are shared by digest).
    served = {v["version"]: v["served_in"] for v in ctl.model(name)["versions"]}
    assert served[version]["kind"] == "layered"
    assert served[version]["digest"] == served[second]["digest"]
    after = _environments()
    assert len(set(after) - set(before)) <= 1, (before, after)  # never a second build
    (actor,) = [k for k, v in after.items() if v["digest"] == served[version]["digest"]]
    figures("environment built by this test", actor not in before, "")
    assert after[actor]["loads"] - before.get(actor, {}).get("loads", 0) >= 2, after[actor]

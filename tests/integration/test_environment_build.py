"""One environment build in ``make test`` (issue 17): a version whose proof fails in the shared
serving environment and that pins another pandas major is served from a venv that inherits
nothing, built by a replica with uv from its own requirements, proven there, and answers what
pandas 2 computes, on the session's real stack. Its first build here took ~5 s with uv's cache
warm (a cold cache downloads pandas 2, numpy, pyarrow and MLflow's client once). The layered
path (Ray's runtime_env cloning the serving venv, 18-40 s) and the rest of the zoo: ``make zoo``.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from tests.integration.conftest import ControllerHandle, wait_for

DOUBLER = Path(__file__).parents[1] / "zoo" / "models" / "pandas2_doubler.py"
# Building the venv, then the proof in it.
BUILD_TIMEOUT_S = 300.0


def test_a_version_written_for_pandas_2_fails_in_the_shared_environment_and_goes_live_isolated(
    serving_url: str, ctl: ControllerHandle
) -> None:
    """Its ``predict`` calls ``DataFrame.applymap`` (gone in pandas 3): its proof fails in the
    shared environment, the controller moves it to an environment that inherits nothing (its
    requirements pin pandas 2, another major), a replica builds that venv from its
    requirements, proves it there and it goes live, answering what pandas 2 computes."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    assert not hasattr(pd.DataFrame, "applymap"), "the shared environment must be pandas 3"
    name = f"pandas2_{uuid.uuid4().hex[:6]}"
    example = pd.DataFrame({"n": [1, 2]})
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(DOUBLER), input_example=example,
            signature=infer_signature(example, pd.DataFrame({"double": [2, 4]})),
            pip_requirements=["pandas==2.2.3"], registered_model_name=name,
        )  # fmt: skip
    version = str(info.registered_model_version)
    born = MlflowClient().get_model_version(name, version).creation_timestamp / 1000
    state = wait_for(lambda: ctl.state_of(name, version) in ("live", "quarantined")
                     and ctl.state_of(name, version), BUILD_TIMEOUT_S, 0.1)  # fmt: skip
    record: dict[str, Any] = next(v for v in ctl.model(name)["versions"] if v["version"] == version)
    assert state == "live", record
    print(f"pandas 2 model: registration -> live in its own venv {time.time() - born:.1f} s")
    assert any("isolated" in w for w in record.get("warnings", [])), record
    url = f"{serving_url}/models/{name}/versions/{version}/serve"
    answer = wait_for(
        lambda: r if (r := httpx.post(url, json=[{"n": 3}, {"n": 21}], timeout=60)).status_code
        not in (404, 503) else None, 60, 0.05,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json() == [{"double": 6}, {"double": 42}]

"""`sigserve check --prove` on the session's real stack (an `mlflow server`, the controller, Ray
Serve): a model logged but not registered is proven by a serving replica before
`register_model`, as the gate would prove it. One whose predict raises on its own input example
is refused with the cause (exit 1), a good one passes (exit 0), and nothing is written: no
registered model or version, nothing in the controller's store or audit log, no routing-table
entry, and no load through the replica's multiplexer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature

from sigserve.stack import controller
from tests.integration.conftest import (
    ECHO_MODEL,
    HOST,
    RESYNC_INTERVAL_S,
    ControllerHandle,
    check_cli,
    runner_loads,
)
from wire.routing_table import RoutingTable, changes

EXAMPLE = pd.DataFrame({"prompt": ["hello"]})
SIGNATURE = infer_signature(EXAMPLE, pd.DataFrame({"answer": ["hello"]}))


def log_raising() -> str:
    """Log (without registering) a model whose predict raises on anything; its runs:/ URI."""

    class NeverFitted(mlflow.pyfunc.PythonModel):
        def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
            raise ValueError("the model was never fitted\nsecond line, not shown")

    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(name="model", python_model=NeverFitted(), signature=SIGNATURE,
                                input_example=EXAMPLE, pip_requirements=[])  # fmt: skip
    return f"runs:/{run.info.run_id}/model"


def log_echo() -> str:
    """Log (without registering) a TaggedEcho with an input example; its runs:/ URI."""
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(
            name="model", python_model=str(ECHO_MODEL), pip_requirements=[],
            signature=SIGNATURE, input_example=EXAMPLE,
            model_config={"tag": "prove", "input_label": "prompt", "output_label": "answer"},
        )  # fmt: skip
    return f"runs:/{run.info.run_id}/model"


@pytest.fixture()
def proving(ctl: ControllerHandle, serving_url: str) -> Iterator[ControllerHandle]:
    """The session's controller, started again knowing the serving app's URL (it keeps it)."""
    ctl.stop()
    ctl._process = controller(
        ctl.home, host=HOST, port=ctl.port, tracking_uri=ctl.tracking_uri,
        admin_token=ctl.secrets.admin_token, webhook_secret=ctl.secrets.webhook_secret,
        resync_interval_s=RESYNC_INTERVAL_S, serving_token=ctl.secrets.serving_token,
        serving_url=serving_url,
    ).start()  # fmt: skip
    ctl._process.wait_healthy(120)
    yield ctl


@pytest.fixture()
def check(proving: ControllerHandle, monkeypatch: pytest.MonkeyPatch,
          capsys: pytest.CaptureFixture[str]) -> Any:  # fmt: skip
    return check_cli(proving, monkeypatch, capsys, columns=200)


def table(ctl: ControllerHandle) -> RoutingTable:
    token = {"Authorization": f"Bearer {ctl.secrets.serving_token}"}
    r = httpx.get(f"{ctl.url}/routing-table", headers=token, timeout=10)
    r.raise_for_status()
    return RoutingTable.model_validate(r.json())


def test_check_prove_refuses_a_model_that_raises_on_its_example_and_writes_nothing(
    proving: ControllerHandle, check: Any
) -> None:
    name = "check_prove"
    raising, good = log_raising(), log_echo()
    before = table(proving)

    code, out = check(raising, "--model", name, "--prove")
    assert code == 1, out
    assert f"{name}: {raising} would be quarantined (as version 1)" in out, out
    assert "failed its proof on serving (replica " in out, out
    assert "ValueError: the model was never fitted; release it to try again" in out, out
    assert "second line" not in out and "Traceback" not in out

    code, out = check(good, "--model", name, "--prove")
    assert code == 0, out
    assert "would go live" in out, out
    assert "proof on its input example in the shared serving environment (replica " in out, out
    assert "ms): passed" in out and "Nothing was registered or written." in out

    # Nothing written: the registry, the controller's store and log, the table, the replica.
    client = MlflowClient()
    assert client.search_registered_models(filter_string=f"name='{name}'") == []
    r = httpx.get(f"{proving.url}/admin/models/{name}", headers=proving.admin, timeout=10)
    assert r.status_code == 404, r.text
    r = httpx.get(f"{proving.url}/admin/models/{name}/events", headers=proving.admin, timeout=10)
    assert r.status_code == 404, r.text  # no audit event (an empty log of a stored model is 200)
    after = table(proving)
    assert name not in after.models
    # Other models' decisions may publish meanwhile; none of the changes is about this one.
    assert not [c for c in changes(after, before) if c.startswith(f"{name}/")]
    assert not [i for i in runner_loads() if i.startswith(f"{name}/")]

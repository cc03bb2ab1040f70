"""`sigserve check` on the session's real stack (an `mlflow server`, the controller): a model
logged to a run but not registered gets the gate's verdict before `register_model`, and the
check registers and writes nothing, in the registry or the controller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature

from tests.integration.conftest import (
    ECHO_MODEL,
    ControllerHandle,
    check_cli,
    register_echo,
    wait_for,
)


def log_echo(input_label: str) -> str:
    """Log (without registering) a TaggedEcho reading ``input_label``; its runs:/ URI."""
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(
            name="model", python_model=str(ECHO_MODEL), pip_requirements=[],
            signature=infer_signature(pd.DataFrame({input_label: ["x"]}),
                                      pd.DataFrame({"answer": ["x"]})),
            model_config={"tag": "dry", "input_label": input_label, "output_label": "answer"},
        )  # fmt: skip
    return f"runs:/{run.info.run_id}/model"


@pytest.fixture()
def check(ctl: ControllerHandle, monkeypatch: pytest.MonkeyPatch,
          capsys: pytest.CaptureFixture[str]) -> Any:  # fmt: skip
    """`sigserve check ...` as a user with the admin token runs it: exit code, stdout."""
    return check_cli(ctl, monkeypatch, capsys, columns=160)


def written(ctl: ControllerHandle, name: str) -> Any:
    """What a check must not change: the model and its audit log in the controller, its
    versions, tags and aliases in the registry, and which models the registry has."""
    import httpx

    client = MlflowClient()
    model = ctl.model(name)
    events = httpx.get(f"{ctl.url}/admin/models/{name}/events", headers=ctl.admin).json()
    registered = client.get_registered_model(name)
    versions = client.search_model_versions(f"name='{name}'")
    return (
        {k: v for k, v in model.items() if not k.startswith("last_")},
        events,
        (registered.tags, registered.aliases, registered.last_updated_timestamp),
        sorted((v.version, v.tags, v.last_updated_timestamp) for v in versions),
        sorted(m.name for m in client.search_registered_models(max_results=1000)),
    )


def test_check_tells_before_registering_and_writes_nothing(
    ctl: ControllerHandle, check: Any, tmp_path: Path
) -> None:
    name = "dry_run_gate"
    register_echo(name, tag="one")  # v1 reads 'prompt': the contract
    wait_for(lambda: ctl.model(name)["contract"] is not None if ctl.state_of(name, "1") else None,
             60)  # fmt: skip
    breaking, compatible = log_echo("text"), log_echo("prompt")
    before = written(ctl, name)

    code, out = check(breaking, "--model", name)
    assert code == 1, out
    assert f"{name}: {breaking} would be quarantined (as version 2)" in out
    assert "input 'prompt'" in out and "Nothing was registered or written." in out

    code, out = check(compatible, "--model", name)
    assert code == 0, out
    assert "would go live" in out and "not part of the dry run yet" in out

    # A model directory on this machine: its files are sent, the verdict is the same.
    local = mlflow.artifacts.download_artifacts(breaking, dst_path=str(tmp_path))
    code, out = check(local, "--model", name)
    assert code == 1 and "the local model would be quarantined" in out, out

    # A model that does not exist: the artifact would be its first version.
    code, out = check(breaking, "--model", "dry_run_not_registered")
    assert code == 0 and "its signature becomes the contract" in out, out

    assert written(ctl, name) == before

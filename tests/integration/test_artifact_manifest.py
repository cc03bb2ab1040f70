"""A version is bound to every file of its artifact, not to its MLmodel alone: a pickle replaced
in the artifact store after the decision is refused by serving (503), reported, and the
controller quarantines the version (409), on the session's real stack."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import httpx
from mlflow import MlflowClient

from tests.integration.conftest import (
    ControllerHandle,
    artifact_dir,
    problem,
    register_echo,
    register_pickled,
    serve_status,
    wait_for,
)

NAME = "manifest_pickle_swapped"


def another_pickle() -> bytes:
    """The pickle of another model of the same signature, which answers "evil:<prompt>"."""
    import mlflow
    import pandas as pd

    class Pickled(mlflow.pyfunc.PythonModel):  # defined here: pickled by value, as the echo's
        def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
            return pd.DataFrame({"answer": [f"evil:{p}" for p in model_input["prompt"]]})

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.pyfunc.save_model(path=f"{tmp}/m", python_model=Pickled(), pip_requirements=[])
        return (Path(tmp) / "m" / "python_model.pkl").read_bytes()


def test_a_pickle_replaced_after_the_decision_is_refused_reported_and_quarantined(
    home: Path, serving_url: str, ctl: ControllerHandle
) -> None:
    # Version 1 stays the default (a default is loaded ahead as soon as it moves), and the
    # model's proofs are off (a proven version stays loaded where there is room), so version 2
    # is loaded first by the request below, after the swap.
    assert register_echo(NAME, tag="one") == "1"
    wait_for(lambda: ctl.state_of(NAME, "1") == "live", 60)
    MlflowClient().set_registered_model_tag(NAME, "sigserve.proof", "off")
    pinned = httpx.put(f"{ctl.url}/admin/models/{NAME}/default", json={"version": "1"},
                       headers=ctl.admin, timeout=30)
    assert pinned.status_code == 200, pinned.text
    assert register_pickled(NAME) == "2"
    wait_for(lambda: ctl.state_of(NAME, "2") == "live", 60)
    # The MLmodel is untouched, so its digest is still the decided one; only the pickle moves.
    (artifact_dir(home, NAME, "2") / "python_model.pkl").write_bytes(another_pickle())

    def first_answer() -> httpx.Response | None:
        # 404 while the replica's table lacks the version; the first other answer loaded it.
        answer = serve_status(serving_url, NAME, "2")
        return answer if answer.status_code != 404 else None

    first = wait_for(first_answer, 60, 0.05)
    # Before manifests: 200 [{"answer": "evil:hi"}], the swapped model serving.
    assert first.status_code == 503, first.text
    assert "python_model.pkl: " in problem(first)["detail"]

    wait_for(lambda: ctl.state_of(NAME, "2") == "quarantined", 30)
    reason = next(v for v in ctl.model(NAME)["versions"] if v["version"] == "2")["reasons"][0]
    assert "python_model.pkl: " in reason, reason
    assert "not the ones the controller checked" in reason, reason
    wait_for(lambda: serve_status(serving_url, NAME, "2").status_code == 409, 30, 0.05)
    answer = serve_status(serving_url, NAME, "2")
    assert any("python_model.pkl: " in r for r in problem(answer)["reasons"]), answer.text

    events = httpx.get(f"{ctl.url}/admin/models/{NAME}/events", headers=ctl.admin, timeout=10)
    loads = [e for e in events.json()["events"] if e["kind"] == "load"]
    assert loads and loads[0]["actor"].startswith("serving:"), loads
    assert loads[0]["after"]["kind"] == "artifact-mismatch"
    assert serve_status(serving_url, NAME).json() == [{"answer": "one:hi"}]

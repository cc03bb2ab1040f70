"""Another major version of a requirement is a warning; a load that fails is the evidence that
quarantines (issue 17). Both versions name `mlflow==2.22.0` and `pandas==2.2.3`, which the
serving environment (MLflow 3, pandas 3) does not have: the one that loads goes live and
answers, with the mismatches as warnings; the one whose pickle needs a module that exists
nowhere on serving is quarantined by the load-failure report of the replica that tried to prove
it, with the cause, and keeps its warnings (under the environment policy ``shared``, which the
model is tagged with before it)."""

from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from tests.integration.conftest import (
    ControllerHandle,
    problem,
    register_echo,
    serve_status,
    wait_for,
)

NAME = "environment_evidence"
OLD_STACK = ["mlflow==2.22.0", "pandas==2.2.3"]


def version_of(ctl: ControllerHandle, version: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        v for v in ctl.model(NAME)["versions"] if v["version"] == version
    )
    return found


def assert_warned_about_the_old_stack(found: dict[str, Any]) -> None:
    for requirement in OLD_STACK:
        assert any(
            w.startswith(f"requirement {requirement!r}: this version was logged with")
            and "another major version" in w
            for w in found["warnings"]
        ), found["warnings"]


def register_unimportable(tmp_path: Path) -> str:
    """A pickled pyfunc whose class lives in a module only this process could import: serving
    cannot unpickle it (ModuleNotFoundError), as with a model that needs a package of its day."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    module_name = f"sigserve_gone_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{module_name}.py").write_text(
        "import mlflow\n\n\n"
        "class Gone(mlflow.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input, params=None):\n"
        "        return model_input\n",
        encoding="utf-8",
    )
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(module_name)
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=module.Gone(),
                signature=infer_signature(pd.DataFrame({"prompt": ["x"]}),
                                          pd.DataFrame({"answer": ["x"]})),
                pip_requirements=OLD_STACK,
                registered_model_name=NAME,
            )
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module_name, None)
    return str(info.registered_model_version)


def test_a_major_version_mismatch_is_a_warning_and_a_failed_load_is_the_evidence(
    tmp_path: Path, serving_url: str, ctl: ControllerHandle
) -> None:
    loads = register_echo(NAME, tag="old", pip_requirements=OLD_STACK)
    wait_for(lambda: ctl.state_of(NAME, loads) == "live", 60)
    fine = version_of(ctl, loads)
    assert fine["reasons"] == []
    assert_warned_about_the_old_stack(fine)
    answered = wait_for(lambda: (r := serve_status(serving_url, NAME)).status_code == 200 and r,
                        60)
    assert answered.json() == [{"answer": "old:hi"}]

    # Under ``shared``: the shared environment's evidence is the last word. (Under ``isolate``,
    # the default, a version that fails there and pins another MLflow major is moved to an
    # isolated environment of its own and quarantined only if it fails there too, with both
    # causes: tests/unit/test_controller_own_environments.py.)
    MlflowClient().set_registered_model_tag(NAME, "sigserve.environment", "shared")
    broken = register_unimportable(tmp_path)
    # The environment check lets it through (warnings only); its proof's load is what finds
    # out, before any client could call it: it is never live.
    states: set[str | None] = set()

    def refused() -> bool:
        states.add(ctl.state_of(NAME, broken))
        return serve_status(serving_url, NAME, broken).status_code == 409

    wait_for(refused, 60, 0.2)
    assert "live" not in states, states
    quarantined = version_of(ctl, broken)
    assert quarantined["state"] == "quarantined"
    why = quarantined["reasons"]
    assert len(why) == 1, why
    assert why[0].startswith("serving could not load its artifact (replica "), why
    assert "ModuleNotFoundError" in why[0] and "sigserve_gone_" in why[0], why
    assert_warned_about_the_old_stack(quarantined)
    assert problem(serve_status(serving_url, NAME, broken))["reasons"] == why
    # The version that loads goes on answering.
    assert serve_status(serving_url, NAME).json() == [{"answer": "old:hi"}]

"""Versions whose artifact was broken *before* it was registered, so the files the controller
checks (and binds in the version's manifest) are the broken ones and serving finds out by
loading them, not by a manifest mismatch.

Breaking an artifact after ``register_*`` returned races the controller's read: since versions
are bound to a manifest of their files (docs/architecture.md, "Decisions are bound to
artifacts"), a file changed after the read is refused as ``artifact-mismatch``, not loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


def logged_dir(home: Path, model_id: str) -> Path:
    """Where the MLflow server keeps a logged model's files (``--artifacts-destination``)."""
    import mlflow

    location = str(mlflow.get_logged_model(model_id).artifact_location)
    parsed = urlparse(location)
    assert parsed.scheme == "mlflow-artifacts", location
    path = home.resolve() / "mlflow-artifacts" / parsed.path.lstrip("/")
    assert (path / "MLmodel").is_file(), path
    return path


def register_broken(home: Path, name: str, info: Any, damage: Callable[[Path], None]) -> str:
    """Register the logged model ``info`` (a ``ModelInfo``) under ``name`` after ``damage``
    was done to its files; returns the version number."""
    import mlflow

    damage(logged_dir(home, info.model_id))
    return str(mlflow.register_model(info.model_uri, name).version)


def log_echo(tag: str) -> Any:
    """Log, without registering, a TaggedEcho model as ``conftest.register_echo`` logs it."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from tests.integration.conftest import ECHO_MODEL

    with mlflow.start_run():
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ECHO_MODEL),
            signature=infer_signature(pd.DataFrame({"prompt": ["x"]}),
                                      pd.DataFrame({"answer": ["x"]})),
            model_config={"tag": tag, "input_label": "prompt", "output_label": "answer"},
            pip_requirements=[],
        )


def register_broken_pickle(home: Path, name: str, *, keep: Callable[[int], int]) -> str:
    """A pickled pyfunc of the echo's signature whose ``python_model.pkl`` keeps ``keep(size)``
    of its bytes, registered under ``name`` once broken; returns the version number."""
    from tests.integration.conftest import log_pickled

    info = log_pickled()

    def truncate(directory: Path) -> None:
        pickle = directory / "python_model.pkl"
        data = pickle.read_bytes()
        pickle.write_bytes(data[: keep(len(data))])

    return register_broken(home, name, info, truncate)

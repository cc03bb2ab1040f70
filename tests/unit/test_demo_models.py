"""The demo models, end to end against a throwaway local MLflow store (SQLite + a tmp dir).

The whole demo is registered once per module (~10 s, mostly imports); the tests then load the
versions back the way the serving app does, through ``models:/name/version`` URIs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature

from sigserve.demo import register as demo
from sigserve.demo.hub import hub_reachable
from sigserve.demo.signatures import embedding_signature, translation_signature

EXPECTED = [
    ("translation_model", "1"),
    ("translation_model", "2"),
    ("translation_model", "3"),
    ("minilm_embeddings", "1"),
]


class RecordingConsole:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, *objects: Any) -> None:
        self.lines.append(" ".join(str(o) for o in objects))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    console = RecordingConsole()
    with pytest.MonkeyPatch.context() as patch:
        # The Hub is not reachable from here; saying so up front also skips the 3 s probe.
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        started = time.monotonic()
        registered = demo.register_demo_models(
            uri, console, artifact_location=str(tmp / "artifacts")
        )
        seconds = time.monotonic() - started
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            yield {
                "uri": uri,
                "tmp": tmp,
                "registered": registered,
                "console": console,
                "seconds": seconds,
            }
        finally:
            mlflow.set_tracking_uri(previous)


def test_registers_the_notebook_versions_and_says_why_t5_is_tiny(store: dict[str, Any]) -> None:
    assert store["registered"] == EXPECTED
    assert demo.TINY_T5_NOTICE in store["console"].lines
    assert "unreachable" in demo.TINY_T5_NOTICE
    client = mlflow.MlflowClient(tracking_uri=store["uri"])
    description = client.get_model_version("translation_model", "1").description
    assert description == demo.TINY_T5_NOTICE


def test_translation_v1_loads_and_translates_two_rows(store: dict[str, Any]) -> None:
    model = mlflow.pyfunc.load_model("models:/translation_model/1")
    out = model.predict(pd.DataFrame({"prompt": ["The weather is lovely today", "Hello, Jon."]}))
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["translation_text"]
    assert len(out) == 2
    assert all(isinstance(text, str) for text in out["translation_text"])


def test_versions_differ_as_in_the_notebook(store: dict[str, Any]) -> None:
    infos = {v: mlflow.models.get_model_info(f"models:/translation_model/{v}") for v in "123"}
    inputs = {v: info.signature.inputs.input_names() for v, info in infos.items()}
    assert inputs == {"1": ["prompt"], "2": ["prompt"], "3": ["text_to_translate"]}
    for info in infos.values():
        assert info.signature.outputs.input_names() == ["translation_text"]
        assert info.signature.inputs.to_dict()[0]["required"] is True
    pyfunc = {v: info.flavors["python_function"] for v, info in infos.items()}
    assert [pyfunc[v]["config"]["lang_to"] for v in "123"] == ["de", "fr", "de"]
    for flavor in pyfunc.values():
        # A model from code, not a pickle: loading it needs no class from this package.
        assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
        assert "python_model" not in flavor
        # The tiny T5 travels with each version (the Hub is unreachable here).
        assert "hf_model" in flavor["artifacts"]


def test_v3_reads_its_renamed_input(store: dict[str, Any]) -> None:
    model = mlflow.pyfunc.load_model("models:/translation_model/3")
    out = model.predict(pd.DataFrame({"text_to_translate": ["Hello my name is Jon."]}))
    assert len(out) == 1
    with pytest.raises(mlflow.exceptions.MlflowException):
        model.predict(pd.DataFrame({"prompt": ["Hello my name is Jon."]}))


def test_minilm_gives_real_384_dim_embeddings(store: dict[str, Any]) -> None:
    info = mlflow.models.get_model_info("models:/minilm_embeddings/1")
    assert info.signature.inputs.input_names() == ["text"]
    assert info.signature.outputs.input_names() == ["embedding"]
    model = mlflow.pyfunc.load_model("models:/minilm_embeddings/1")
    texts = [
        "a cat sits on the mat",
        "a kitten is sitting on a rug",
        "stock markets fell sharply today",
    ]
    out = model.predict(pd.DataFrame({"text": texts}))
    vectors = np.array(out["embedding"].tolist(), dtype=float)
    assert vectors.shape == (3, 384)

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3


def test_second_registration_finds_the_same_models(store: dict[str, Any]) -> None:
    console = RecordingConsole()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        again = demo.register_demo_models(store["uri"], console)
    assert again == EXPECTED
    client = mlflow.MlflowClient(tracking_uri=store["uri"])
    assert demo.existing_versions(client, "translation_model") == ["1", "2", "3"]
    assert demo.TINY_T5_NOTICE not in console.lines  # nothing was built the second time
    # The caller's tracking URI is put back.
    assert mlflow.get_tracking_uri() == store["uri"]


def test_signatures_round_trip_through_their_dict_form() -> None:
    for signature in (translation_signature("prompt"), embedding_signature()):
        as_dict = signature.to_dict()
        assert ModelSignature.from_dict(as_dict) == signature
        assert ModelSignature.from_dict(as_dict).to_dict() == as_dict


def test_model_files_stay_self_contained_and_agree_on_artifact_keys() -> None:
    for path in (demo.TRANSLATION_CODE, demo.EMBEDDING_CODE):
        source = path.read_text()
        assert "from sigserve" not in source and "import sigserve" not in source
    assert f'ARTIFACT_KEY = "{demo.TRANSLATION_ARTIFACT_KEY}"' in demo.TRANSLATION_CODE.read_text()
    assert f'ARTIFACT_KEY = "{demo.EMBEDDING_ARTIFACT_KEY}"' in demo.EMBEDDING_CODE.read_text()


def test_tiny_t5_loads_and_generates(tmp_path: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from sigserve.demo.tiny_t5 import build_tiny_t5

    directory = build_tiny_t5(tmp_path / "t5")

    def load_and_generate() -> tuple[Any, Any, list[str]]:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForSeq2SeqLM.from_pretrained(directory)
        encoded = tokenizer(["translate English to German: Hello"], return_tensors="pt")
        generated = model.generate(**encoded, max_new_tokens=20)
        return tokenizer, encoded, tokenizer.batch_decode(generated, skip_special_tokens=True)

    # How fast is measured by benchmarks/, not asserted here (the machine is shared).
    tokenizer, encoded, text = load_and_generate()
    assert isinstance(text[0], str)
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1
    assert "<unk>" not in tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])


def test_hub_check_honours_offline_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable("google-t5/t5-base") is False
    assert os.environ["HF_HUB_OFFLINE"] == "1"

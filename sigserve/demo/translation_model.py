"""The notebook's translation model, as an MLflow 3 "model from code".

MLflow copies this file into each logged model and executes it on load, so it must stay
self-contained: no imports from ``sigserve`` (the serving side need not have it installed).

transformers 5 removed the ``translation_xx_to_yy`` pipelines the notebook used; this does what
they did for T5: prefix T5's task text ("translate English to German: "), ``generate``, decode.
Settings come from ``model_config`` (the same keys as the notebook), so the three registered
versions share this one file:

- ``hfhub_name`` ("google-t5/t5-base"): where the weights come from when none were logged;
- ``lang_from`` ("en"), ``lang_to`` ("de"): language codes among en, de, fr, ro;
- ``input_label`` ("prompt"): the input column, which the notebook renames to break clients.

Weights logged as the ``hf_model`` artifact (a ``save_pretrained`` directory) win over the Hub.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc.model import PythonModel, PythonModelContext

ARTIFACT_KEY = "hf_model"
OUTPUT_COLUMN = "translation_text"
MAX_NEW_TOKENS = 20

# The languages T5 was trained to translate between, by the names its task prefix uses.
LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "ro": "Romanian"}


def task_prefix(lang_from: str, lang_to: str) -> str:
    """T5's prompt prefix, e.g. ``"translate English to German: "``."""
    unknown = sorted({lang_from, lang_to} - LANGUAGE_NAMES.keys())
    if unknown:
        raise ValueError(
            f"unsupported language code(s) {unknown}; T5 knows {sorted(LANGUAGE_NAMES)}"
        )
    return f"translate {LANGUAGE_NAMES[lang_from]} to {LANGUAGE_NAMES[lang_to]}: "


class TranslationModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        # Imported here, not at module level: MLflow also executes this file at log time, and
        # registering a version should not pay for importing torch.
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        config: dict[str, Any] = dict(context.model_config or {})
        self.input_label = str(config.get("input_label", "prompt"))
        self.prefix = task_prefix(
            str(config.get("lang_from", "en")), str(config.get("lang_to", "de"))
        )
        source = (context.artifacts or {}).get(ARTIFACT_KEY) or str(
            config.get("hfhub_name", "google-t5/t5-base")
        )
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(source).eval()

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        import torch

        texts = [self.prefix + str(text) for text in model_input[self.input_label].tolist()]
        if not texts:
            return pd.DataFrame({OUTPUT_COLUMN: pd.Series([], dtype=object)})
        encoded = self.tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=512
        )
        with torch.inference_mode():
            generated = self.model.generate(**encoded, max_new_tokens=MAX_NEW_TOKENS)
        decoded = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return pd.DataFrame({OUTPUT_COLUMN: [text.strip() for text in decoded]})


mlflow.models.set_model(TranslationModel())

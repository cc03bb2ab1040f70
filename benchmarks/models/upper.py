"""A trivial MLflow "model from code" for the benchmarks: upper-cases one string column.

Input: a required string column ``prompt``. Output: ``output``, the same string upper-cased.
With an artifact logged under ``ballast`` (a ``.npy`` file), the model holds that array in
memory while loaded and never reads it: it only makes a loaded version weigh something, so a
cache that keeps too many versions shows in the memory figures (``many_versions.py``).

MLflow copies this file into each logged model and executes it on load: it stays
self-contained.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc.model import PythonModel, PythonModelContext

INPUT_COLUMN = "prompt"
OUTPUT_COLUMN = "output"
BALLAST_KEY = "ballast"


class UpperModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        self.ballast: Any = None
        path = (context.artifacts or {}).get(BALLAST_KEY)
        if path:
            import numpy as np

            self.ballast = np.load(path)  # read into memory, not memory-mapped

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        values = model_input[INPUT_COLUMN].tolist()
        return pd.DataFrame({OUTPUT_COLUMN: [str(v).upper() for v in values]})


mlflow.models.set_model(UpperModel())

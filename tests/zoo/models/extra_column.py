"""A pyfunc whose answer carries a column its output schema lacks (``debug``, beside the
declared ``answer``): what a model does when someone left a diagnostic in (models from code)."""

from typing import Any

import mlflow
import pandas as pd


class ExtraColumn(mlflow.pyfunc.PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        prompts = list(model_input["prompt"])
        return pd.DataFrame({
            "answer": [p.upper() for p in prompts],
            "debug": [f"len={len(p)}" for p in prompts],
        })


mlflow.models.set_model(ExtraColumn())

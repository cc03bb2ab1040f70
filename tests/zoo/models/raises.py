"""A pyfunc that raises on every input, its own input example included (models from code)."""

from typing import Any

import mlflow
import pandas as pd


class Raises(mlflow.pyfunc.PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        raise ValueError(f"cannot score {len(model_input)} rows: the model was never fitted")


mlflow.models.set_model(Raises())

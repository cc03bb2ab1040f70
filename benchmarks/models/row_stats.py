"""A numeric tensor model for the Open Inference Protocol benchmark: each row of a float32
(-1, 3) tensor becomes its sum and its maximum. Self-contained (MLflow executes it on load)."""

import mlflow
import numpy as np


class RowStats(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        array = np.asarray(model_input, dtype=np.float32)
        return np.stack([array.sum(axis=1), array.max(axis=1)], axis=1)


mlflow.models.set_model(RowStats())

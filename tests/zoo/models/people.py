"""A pyfunc of an ``Object`` column and a param (models from code: nothing pickled).

``person`` is an object ``{"name": str, "score": double}``; ``scale`` (default 1.0) multiplies
the score. The greeting makes a wrong hand-over of the object (a string, a dict of other keys)
show in the answer, not only in a number.
"""

from typing import Any

import mlflow
import pandas as pd


class People(mlflow.pyfunc.PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        scale = float((params or {}).get("scale", 1.0))
        people = list(model_input["person"])
        return pd.DataFrame({
            "greeting": [f"hello {p['name']}" for p in people],
            "weighted": [p["score"] * scale for p in people],
        })


mlflow.models.set_model(People())

"""A pyfunc written for pandas 2: ``DataFrame.applymap``, which pandas 3 removed (models from
code). Logged with ``pandas==2.2.3`` in its requirements, it fails its proof in the shared
serving environment (pandas 3) and answers in an environment that inherits nothing, built
from its own requirements (issue 17)."""

from typing import Any

import mlflow
import pandas as pd


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        doubled = model_input[["n"]].applymap(lambda value: int(value) * 2)
        return doubled.rename(columns={"n": "double"})


mlflow.models.set_model(Doubler())

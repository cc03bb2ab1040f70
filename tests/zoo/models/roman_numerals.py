"""A pyfunc that needs a package the shared serving environment lacks: ``roman`` (a small
pure-Python package from PyPI), imported by ``predict`` (models from code). It loads anywhere;
it answers only where ``roman`` is installed: an environment of its own (issue 17)."""

from typing import Any

import mlflow
import pandas as pd


class RomanNumerals(mlflow.pyfunc.PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        import roman  # not in the serving environment: only its own has it

        return pd.DataFrame({"numeral": [roman.toRoman(int(n)) for n in model_input["n"]]})


mlflow.models.set_model(RomanNumerals())

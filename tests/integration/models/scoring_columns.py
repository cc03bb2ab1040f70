"""A column model with a param, for the scoring-protocol parity test: ``out`` is the prompt with
"!", ``y`` is ``x`` times the param ``scale``. A prompt "boom" makes its own code raise."""

import mlflow
import pandas as pd


class Columns(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if (frame["prompt"] == "boom").any():
            raise ValueError("boom is not a prompt this model takes")
        scale = (params or {}).get("scale", 1.0)
        return pd.DataFrame({"out": frame["prompt"] + "!", "y": frame["x"] * scale})


mlflow.models.set_model(Columns())

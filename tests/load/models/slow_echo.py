"""The integration tests' tagged echo, slow to load as a real model is (its weights): answers
"<tag>:<input>". ``model_config``: ``tag``, ``input_label``, ``output_label``, ``load_s``."""

import time

import mlflow
import pandas as pd


class SlowEcho(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        config = context.model_config
        self.tag = config.get("tag", "")
        self.input_label = config.get("input_label", "prompt")
        self.output_label = config.get("output_label", "answer")
        time.sleep(float(config.get("load_s", 0.0)))

    def predict(self, context, model_input, params=None):
        values = model_input[self.input_label].tolist()
        return pd.DataFrame({self.output_label: [f"{self.tag}:{v}" for v in values]})


mlflow.models.set_model(SlowEcho())

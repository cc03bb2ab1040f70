"""A model from code for the fault tests: answers "<tag>:<prompt>" at once, except that a
prompt "sleep" makes its predict call sleep ``sleep_s`` (model_config, 300 by default) first: a
model that hangs on one input and is fast on every other. ``model_config``: ``tag``,
``sleep_s``."""

import time

import mlflow
import pandas as pd


class Sleepy(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.tag = context.model_config.get("tag", "")
        self.sleep_s = float(context.model_config.get("sleep_s", 300))

    def predict(self, context, model_input, params=None):
        prompts = model_input["prompt"].tolist()
        if "sleep" in prompts:
            time.sleep(self.sleep_s)
        return pd.DataFrame({"answer": [f"{self.tag}:{p}" for p in prompts]})


mlflow.models.set_model(Sleepy())

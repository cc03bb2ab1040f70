"""A model from code that shows how it was called: each output row carries the prompt, how many
rows its predict call got (``rows``) and which call of this loaded model it was (``call``).
Each call sleeps ``delay_s`` (model_config), so concurrent requests queue behind it; a prompt
"boom" makes the call raise."""

import itertools
import time

import mlflow
import pandas as pd


class BatchProbe(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.delay_s = float(context.model_config.get("delay_s", 0.05))
        self.calls = itertools.count(1)

    def predict(self, context, model_input, params=None):
        call = next(self.calls)
        prompts = model_input["prompt"].tolist()
        if "boom" in prompts:
            raise ValueError("the prompt 'boom' is not allowed")
        time.sleep(self.delay_s)
        n = len(prompts)
        return pd.DataFrame({"answer": prompts, "rows": [n] * n, "call": [call] * n})


mlflow.models.set_model(BatchProbe())

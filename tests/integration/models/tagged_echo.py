"""A model from code for the integration tests: answers "<tag>:<input>" so a test can tell
which version answered. ``model_config``: ``tag``, ``input_label`` and ``output_label``."""

import mlflow
import pandas as pd


class TaggedEcho(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.tag = context.model_config.get("tag", "")
        self.input_label = context.model_config.get("input_label", "prompt")
        self.output_label = context.model_config.get("output_label", "answer")

    def predict(self, context, model_input, params=None):
        values = model_input[self.input_label].tolist()
        return pd.DataFrame({self.output_label: [f"{self.tag}:{v}" for v in values]})


mlflow.models.set_model(TaggedEcho())

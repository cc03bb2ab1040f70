"""A model from code for the rollout tests: answers "<tag>:<input>" as ``tagged_echo`` does, and
fails the inputs ``p<n>`` whose ``n % 10`` is below ``fail_tenths`` (its ``model_config``), so a
test that sends ``p0, p1, ...`` in turn sees that share of them fail, each failing on its own
(a shared call that fails is predicted again request by request). With ``odd_prefix``, inputs
that start with it are answered "other:<input>" instead: a version that answers differently on
one class of inputs."""

import mlflow
import pandas as pd


class FlakyEcho(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.tag = context.model_config.get("tag", "")
        self.fail_tenths = int(context.model_config.get("fail_tenths", 0))
        self.odd_prefix = context.model_config.get("odd_prefix") or None

    def predict(self, context, model_input, params=None):
        values = model_input["prompt"].tolist()
        for value in values:
            digits = str(value)[1:]
            if digits.isdigit() and int(digits) % 10 < self.fail_tenths:
                raise RuntimeError(f"flaky: {value} fails")
        return pd.DataFrame({"answer": [self._answer(str(v)) for v in values]})

    def _answer(self, value):
        if self.odd_prefix and value.startswith(self.odd_prefix):
            return f"other:{value}"
        return f"{self.tag}:{value}"


mlflow.models.set_model(FlakyEcho())

"""A streaming pyfunc for tests/integration/test_streaming.py: ``predict_stream`` yields one chunk
per word of the prompt. With the param ``gate`` (a file path) it yields its first chunk, then
waits for that file to exist before the next (and fails after ``GATE_WAIT_S``), so a test can
see the first event arrive while the model has not yet made the rest. With ``endless`` it
yields its words again and again, and once the generator is closed (its client left) it makes
the file ``closed_marker``. ``predict`` answers the whole prompt at once."""

import itertools
import time
from pathlib import Path

import mlflow
import pandas as pd

GATE_WAIT_S = 20.0


class StreamingEcho(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return pd.DataFrame({"answer": [str(p).upper() for p in frame["prompt"]]})

    def predict_stream(self, context, model_input, params=None):
        params = params or {}
        words = str(model_input["prompt"]).split()
        if params.get("endless"):
            yield from self._endless(words, params.get("closed_marker") or "")
            return
        gate = params.get("gate") or ""
        for index, word in enumerate(words):
            if index == 1 and gate:
                deadline = time.monotonic() + GATE_WAIT_S
                while not Path(gate).exists():
                    if time.monotonic() > deadline:
                        # The client never saw the first chunk: the answer was held back.
                        raise RuntimeError(f"{gate} was not made within {GATE_WAIT_S}s")
                    time.sleep(0.01)
            yield {"index": index, "token": word * int(params.get("repeat", 1))}
        if (params.get("fail_after") or 0) > 0:
            raise RuntimeError("the stream broke after its words")

    def _endless(self, words, closed_marker):
        try:
            for index, word in enumerate(itertools.cycle(words)):
                time.sleep(0.01)  # a model that takes its time over each chunk
                yield {"index": index, "token": word}
        finally:
            if closed_marker:
                Path(closed_marker).touch()


mlflow.models.set_model(StreamingEcho())

"""``/serve`` with a stream from a model served in an environment of its own (issue 17): its
``predict_stream`` runs there and its chunks cross one by one, pulled as the API pulls them
(``serving.streaming.ChunkStream``: every pull in a worker thread). Before, the model answered
a stream with a 500 (the replica's stand-in had no ``predict_stream``). The environment's
actor is in this process (``tests/unit/test_serving_environment_manager.InProcess``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from serving.environments import EnvironmentManager
from serving.streaming import _END, ChunkStream, cannot_stream
from tests.unit.test_serving_environment_manager import InProcess, manager
from tests.unit.test_serving_environments import LAYERED, entry_for, target_of


class Counts(PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return pd.DataFrame({"answer": ["III"] * len(model_input)})

    def predict_stream(self, context: Any, model_input: Any, params: Any = None
                       ) -> Iterator[str]:  # fmt: skip
        # MLflow hands predict_stream one record as a dict.
        for n in range(int(model_input["n"])):
            yield f"chunk {n}"


def test_a_model_in_its_environment_streams_its_chunks_one_pull_at_a_time(tmp_path: Path) -> None:
    cluster = InProcess()
    target = target_of("counts", entry_for(tmp_path, "counts", Counts()))

    async def scenario() -> tuple[list[Any], list[Any]]:
        environments: EnvironmentManager = manager(cluster)
        await environments.build(LAYERED)
        loaded = await environments.load(target.artifact)
        assert cannot_stream(loaded.model) is None

        async def pull(step: Any) -> Any:
            return await asyncio.to_thread(step)

        stream = ChunkStream(lambda: loaded.model.predict_stream(pd.DataFrame({"n": [3]})), pull)
        chunks = []
        while (chunk := await stream.next()) is not _END:
            chunks.append(chunk)
        # A client that leaves after one chunk: the model's generator is closed there.
        left = ChunkStream(lambda: loaded.model.predict_stream(pd.DataFrame({"n": [9]})), pull)
        first = [await left.next()]
        left.close()
        await asyncio.sleep(0.1)
        host = cluster.created[0].host
        assert host is not None and host._streams == {}
        loaded.close()
        return chunks, first

    chunks, first = asyncio.run(scenario())
    assert chunks == ["chunk 0", "chunk 1", "chunk 2"] and first == ["chunk 0"]

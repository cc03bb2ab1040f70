"""Tensor bodies on ``/invocations`` answer what MLflow's own scoring server answers, and share
predict calls.

Both servers run here in one process on the same loaded model: MLflow's scoring server is the
FastAPI app ``mlflow.pyfunc.scoring_server.init`` makes of it (what ``mlflow models serve``
runs), sigserve's the real API and model host. Each body goes to both: the status class and
every 2xx answer (parsed JSON) must be the same. Concurrent requests to sigserve share predict
calls, each answered what MLflow answers it alone.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pytest
from mlflow.models import ModelSignature
from mlflow.pyfunc.scoring_server import init
from mlflow.types.schema import Schema, TensorSpec

from serving.api import create_app
from serving.loader import LoadedModel
from serving.model_host import ModelHost
from serving.resolve import Target
from serving.table_source import TableSource
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState

MODEL_CODE = """
import mlflow
import numpy as np


class RowStats(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        named = isinstance(model_input, dict)
        array = model_input["x"] if named else model_input
        flat = np.asarray(array).reshape(len(array), -1)
        out = np.stack([flat.sum(axis=1), flat.max(axis=1)], axis=1)
        if named and "m" in model_input:
            # m's values row by row, as many as x has: m of another length shows.
            out[:, 0] += np.resize(np.asarray(model_input["m"], dtype=out.dtype), len(out))
        return out


mlflow.models.set_model(RowStats())
"""

UNNAMED = TensorSpec(np.dtype(np.float32), (-1, 3))
NAMED = TensorSpec(np.dtype(np.int64), (-1, 2), "x")
SEVERAL = [
    TensorSpec(np.dtype(np.float32), (-1, 3), "x"),
    TensorSpec(np.dtype(np.int64), (-1,), "m"),
]
BODIES: dict[str, list[Any]] = {
    "unnamed": [
        {"inputs": [[1.0, 2.0, 3.0]]},
        {"instances": [[1.5, -2, 3e10], [0.1, 0.2, 0.3]]},
        {"inputs": [[1, 2, 3], [4, 5, 6]], "params": None},
        {"inputs": [["1.5", "2", "3"]]},  # numbers as strings: numpy reads them
        {"inputs": [[True, False, None]]},  # bools and a null: numpy reads them too
        {"inputs": [[1.0, 2.0]]},  # another width: refused by the enforcement
        {"inputs": [[1.0, 2.0, 3.0], [1.0]]},  # ragged: refused by the parser
        {"inputs": [[1.0, "x", 3.0]]},
        {"inputs": []},
        {"inputs": {"x": [[1.0, 2.0, 3.0]]}},
        {"inputs": 5},
    ],
    "named": [
        {"inputs": [[1, 2], [3, 4]]},
        {"inputs": {"x": [[1, 2]]}},
        {"instances": [[5, 6]]},
        {"inputs": {"x": [[1, 2]], "y": [1]}},
        {"inputs": [[1.5, 2]]},  # a float in an int64 tensor: numpy truncates, as in MLflow
        {"inputs": [[2**63, 2]]},
        {"instances": [{"x": [1, 2]}, {"x": [3, 4]}]},  # TF-serving's rows as objects
        {"instances": [{"x": [1, 2]}, {"y": [3, 4]}]},
        {"instances": [{"x": [1, 2]}, [3, 4]]},
        {"instances": [{"x": [1, 2, 3]}]},
        {"inputs": [{"x": [1, 2]}]},  # objects as ``inputs``: MLflow's parser reads them
    ],
    "several": [
        {"inputs": {"x": [[1.0, 2.0, 3.0]], "m": [1]}},
        {"instances": {"m": [1, 0], "x": [[1.0, 2.0, 3.0], [4, 5, 6]]}},
        {"inputs": {"x": [[1.0, 2.0, 3.0]], "m": [1, 2]}},  # unequal: MLflow's parser reads it
        {"instances": {"x": [[1.0, 2.0, 3.0]], "m": [1, 2]}},  # ... and refuses it here
        {"inputs": {"x": [[1.0, 2.0, 3.0]]}},
        {"inputs": {"x": [[1.0, 2.0, 3.0]], "m": [1], "z": [0]}},
        {"inputs": [[1.0, 2.0, 3.0]]},
        {"inputs": {"x": [[1.0, 2.0, 3.0], [1, 1, 1]], "m": [7]}},
        {"instances": [{"x": [1.0, 2.0, 3.0], "m": 1}, {"m": 0, "x": [4, 5, 6]}]},
        {"instances": [{"x": [1.0, 2.0, 3.0], "m": 1}, {"x": [4, 5, 6]}]},
        {"instances": [{"x": [1.0, 2.0, 3.0], "m": 1, "z": 2}]},
        {"instances": [{"x": [1.0, 2.0], "m": 1}]},
        {"inputs": [{"x": [1.0, 2.0, 3.0], "m": 1}]},
    ],
}


def _apps(tmp_path: Path, specs: list[TensorSpec]) -> tuple[Any, Any, ModelHost]:
    code = tmp_path / "row_stats.py"
    code.write_text(MODEL_CODE)
    outputs = Schema([TensorSpec(specs[0].type, (-1, 2))])
    signature = ModelSignature(Schema(specs), outputs)
    path = tmp_path / "model"
    # Requirements said, not inferred (MLflow infers them in a process of its own that loads the
    # model: seconds per save); nothing here reads them.
    mlflow.pyfunc.save_model(path, python_model=str(code), signature=signature, pip_requirements=[])
    model = mlflow.pyfunc.load_model(str(path))
    wire = signature.to_dict()
    entry = VersionEntry(
        version="1", state=VersionState.LIVE, signature=wire, source="models:/m-1",
        mlmodel_digest="1" * 64,
    )  # fmt: skip
    table = RoutingTable(
        revision=1,
        models={
            "m": ModelEntry(name="m", default_version="1", contract=wire, versions={"1": entry})
        },
    )

    async def get_model(target: Target) -> LoadedModel:
        return LoadedModel(model, path)

    def controller(request: httpx.Request) -> httpx.Response:
        if int(request.url.params["after"]) < table.revision:
            return httpx.Response(200, content=table.model_dump_json())
        return httpx.Response(204)

    source = TableSource("http://controller", transport=httpx.MockTransport(controller))
    host = ModelHost(get_model)
    return create_app(source, host, startup_wait_s=5), init(model), host


def _nulls(answer: Any) -> Any:
    """MLflow's answer with NaN as null: MLflow writes a bare ``NaN`` (not JSON), sigserve null
    (a listed difference, docs/architecture.md)."""
    if isinstance(answer, float) and answer != answer:
        return None
    if isinstance(answer, list):
        return [_nulls(v) for v in answer]
    if isinstance(answer, dict):
        return {k: _nulls(v) for k, v in answer.items()}
    return answer


async def _send(app: Any, path: str, bodies: list[Any]) -> list[tuple[int, Any]]:
    """Every body at once; (status, parsed answer) of each."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        headers = {"content-type": "application/json"}
        answers = await asyncio.gather(
            *(client.post(path, content=json.dumps(b), headers=headers) for b in bodies)
        )
    return [(a.status_code, a.json()) for a in answers]


@pytest.mark.parametrize("kind", ["unnamed", "named", "several"])
def test_tensor_bodies_are_answered_as_mlflows_scoring_server_answers_them(
    tmp_path: Path, kind: str
) -> None:
    specs = {"unnamed": [UNNAMED], "named": [NAMED], "several": SEVERAL}[kind]
    sigserve, mlflows, _ = _apps(tmp_path, specs)
    for body in BODIES[kind]:
        ((ours, our_answer),) = asyncio.run(_send(sigserve, "/models/m/invocations", [body]))
        ((theirs, their_answer),) = asyncio.run(_send(mlflows, "/invocations", [body]))
        assert ours // 100 == theirs // 100, (body, our_answer, their_answer)
        if theirs == 200:
            assert our_answer == _nulls(their_answer), body


@pytest.mark.parametrize("several", [False, True])
def test_concurrent_tensor_invocations_share_predict_calls(tmp_path: Path, several: bool) -> None:
    """Rows as one tensor, or as tensors by name and (TF-serving's form) as objects, share
    calls; tensors by name of unequal lengths among them are answered alone, as MLflow answers
    them."""
    sigserve, mlflows, host = _apps(tmp_path, SEVERAL if several else [UNNAMED])
    bodies: list[Any] = []
    for i in range(12):
        rows = [[float(i), 1.0, -1.0]] * (1 + i % 3)
        if not several:
            bodies.append({"inputs": rows})
        elif i % 4 == 1:
            bodies.append({"inputs": {"x": rows, "m": [i] * len(rows)}})
        else:
            bodies.append({"instances": [{"x": row, "m": i} for row in rows]})
    answered = 12
    if several:
        # Unequal lengths, read here and predicted alone: merged, m would shift onto others.
        bodies += [{"inputs": {"x": [[9.0, 9.0, 9.0]], "m": [100, 200, 300]}}] * 2
        answered += 2
    bad = [[1.0, 2.0]]
    bodies.append({"inputs": {"x": bad, "m": [1]} if several else bad})
    ours = asyncio.run(_send(sigserve, "/models/m/invocations", bodies))
    theirs = [asyncio.run(_send(mlflows, "/invocations", [body]))[0] for body in bodies]
    # The last body is refused (another width), alone: the others are answered.
    assert [status // 100 for status, _ in ours] == [2] * answered + [4]
    assert [status // 100 for status, _ in theirs] == [2] * answered + [4]
    assert [a for _, a in ours[:answered]] == [_nulls(a) for _, a in theirs[:answered]]
    (stats,) = host.batch_stats().values()
    # Every body was read as a tensor (none by MLflow's parser, which is never batched).
    assert stats.requests == len(bodies)
    assert stats.calls < 12

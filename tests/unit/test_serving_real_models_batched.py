"""Batched requests to real models answer what the model itself answers each request alone.

Held to something nobody here wrote: a scikit-learn boosted tree (columns) and a PyTorch module
(a tensor signature), saved and loaded by MLflow; concurrent requests go through the real
contract, ``ModelHost.serve`` and the batcher, and each answer is compared with the loaded
model's own in-process ``predict`` on that request's input alone.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature, infer_signature

from serving.contract import contract_for
from serving.loader import LoadedModel
from serving.model_host import ModelHost
from serving.resolve import Target, resolve
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState

REQUESTS = 8
# Said, not inferred: MLflow infers a model's requirements in a Python process of its own that
# loads the model (~4 s a save on an idle machine, more on a loaded one); nothing here reads them.
NO_REQUIREMENTS: list[str] = []


def _host(pyfunc: Any, directory: Path) -> tuple[ModelHost, Target]:
    async def get_model(target: Target) -> LoadedModel:
        return LoadedModel(pyfunc, directory)

    entry = VersionEntry(
        version="1", state=VersionState.LIVE, source="models:/m-1", mlmodel_digest="1" * 64
    )
    table = RoutingTable(
        revision=1,
        models={"m": ModelEntry(name="m", default_version="1", versions={"1": entry})},
    )
    return ModelHost(get_model), resolve(table, "m", None)


async def _together(
    host: ModelHost, target: Target, signature: ModelSignature, bodies: list[Any]
) -> list[Any]:
    contract = contract_for("m", signature.to_dict())
    parsed = [contract.parse(body) for body in bodies]
    return await asyncio.gather(
        *(host.serve(target, p.records, p.params, signature) for p in parsed)
    )


def test_a_boosted_tree_answers_each_batched_request_as_it_predicts_it_alone(
    tmp_path: Path,
) -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(7)
    train = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    tree = HistGradientBoostingRegressor(max_iter=20).fit(train, train.a * 3 - train.b)
    signature = infer_signature(train, tree.predict(train))
    mlflow.sklearn.save_model(
        tree, tmp_path / "tree", signature=signature, serialization_format="cloudpickle",
        pip_requirements=NO_REQUIREMENTS,
    )  # fmt: skip
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "tree"))

    draw = random.Random(11)
    bodies = [
        [{"a": draw.uniform(-2, 2), "b": draw.uniform(-2, 2)} for _ in range(draw.randint(1, 3))]
        for _ in range(REQUESTS)
    ]
    host, target = _host(pyfunc, tmp_path / "tree")
    answers = asyncio.run(_together(host, target, signature, bodies))

    for body, answer in zip(bodies, answers, strict=True):
        alone = pyfunc.predict(pd.DataFrame(body))
        np.testing.assert_allclose(np.asarray(answer, dtype=float), alone, rtol=1e-12)
    assert host.batch_stats()[target.model_id].calls < REQUESTS  # requests did share calls


def test_a_pytorch_module_answers_each_batched_tensor_as_it_predicts_it_alone(
    tmp_path: Path,
) -> None:
    torch = pytest.importorskip("torch")  # the `serving` extra, installed by `make test`

    torch.manual_seed(3)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    example = np.zeros((2, 3), dtype=np.float32)
    signature = infer_signature(example, module(torch.from_numpy(example)).detach().numpy())
    mlflow.pytorch.save_model(
        module, tmp_path / "torch", signature=signature, input_example=example,
        pip_requirements=NO_REQUIREMENTS,
    )  # fmt: skip
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "torch"))

    draw = random.Random(5)
    bodies = [
        {"inputs": [[draw.uniform(-1, 1) for _ in range(3)] for _ in range(draw.randint(1, 3))]}
        for _ in range(REQUESTS)
    ]
    host, target = _host(pyfunc, tmp_path / "torch")
    answers = asyncio.run(_together(host, target, signature, bodies))

    for body, answer in zip(bodies, answers, strict=True):
        alone = pyfunc.predict(np.asarray(body["inputs"], dtype=np.float32))
        np.testing.assert_allclose(np.asarray(answer, dtype=float), alone, rtol=1e-6)
    assert host.batch_stats()[target.model_id].calls < REQUESTS  # requests did share calls

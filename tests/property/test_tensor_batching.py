"""MLflow's scoring protocol with tensor bodies, batched, answers each request what it answers
alone: concurrent ``inputs`` / ``instances`` bodies that ``serving.scoring_protocol`` reads as a
tensor (``serving.tensor_inputs``) share predict calls when the signature's first dimension is
variable (``serving.batch_inputs``, ``serving.batching``), and each request's share of the
answer (``answer_rows``, ``rows_answer``) is MLflow's answer to a prediction of its own input
alone, or the same error: whatever the model returns (an array of rows, numbers, something that
is not one row per request), whatever other requests sent (other widths, ranks, values MLflow's
enforcement refuses, tensors by name of unequal lengths, rows as objects in TF-serving's form).

The model runs MLflow's schema enforcement as ``predict`` does, then describes each row it sees
(dtype, shape and values), so a row computed from another request's input, a dtype another
request forced, or a request refused for another's input shows.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from itertools import zip_longest
from typing import Any

import numpy as np
from hypothesis import event, given
from hypothesis import strategies as st
from mlflow.models import ModelSignature
from mlflow.pyfunc import _validate_prediction_input
from mlflow.types.schema import Schema, TensorSpec

from serving.batch_inputs import model_input, work_for
from serving.batching import Batcher
from serving.exceptions import InvalidInput
from serving.scoring_protocol import ScoringInput, answer, answer_rows, parse, rows_answer
from serving.tensor_inputs import MlflowTensor

SPECS = [
    [TensorSpec(np.dtype(np.float32), (-1, 3))],
    [TensorSpec(np.dtype(np.int64), (-1, 2, 2), "x")],
    [TensorSpec(np.dtype(np.float64), (-1,))],
    [TensorSpec(np.dtype(np.bool_), (-1, 2), "x")],
    [TensorSpec(np.dtype(np.float32), (2, 3))],  # a fixed first dimension: never merged
    [TensorSpec(np.dtype(np.int32), (-1, -1))],  # rows of any width: merged when widths agree
    [TensorSpec(np.dtype(np.float32), (-1, 2), "x"), TensorSpec(np.dtype(np.int64), (-1,), "m")],
]
SHAPES = ["described", "numbers", "whole", "scalar"]


class Model:
    """MLflow's enforcement, then an answer of the shape it is told."""

    def __init__(self, signature: ModelSignature, shape: str) -> None:
        self.signature = signature
        self.shape = shape

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = _validate_prediction_input(data, None, self.signature.inputs, None)[0]
        if isinstance(data, dict):  # several tensors: each row is the row of each (or None)
            rows = zip_longest(*(np.asarray(data[n]).tolist() for n in sorted(data)))
            array = np.array([repr(r) for r in rows], dtype=object)
        else:
            array = np.asarray(data)
        flat = array.reshape(len(array), -1) if array.ndim else array.reshape(1, 1)
        if flat.dtype == object:
            flat = np.array([[len(v)] for v in flat[:, 0]], dtype=np.float64)
        if self.shape == "described":
            return np.array([f"{r.dtype}{r.shape}:{r.tolist()!r}" for r in array], dtype=object)
        if self.shape == "numbers":
            return np.stack([flat.sum(axis=1), flat.max(axis=1)], axis=1).astype(np.float64)
        if self.shape == "whole":
            return {"rows": len(array)}  # not one answer per row: never cut
        return float(flat.sum())


def value(draw: st.DrawFn, dtype: np.dtype[Any], marker: int) -> Any:
    if dtype.kind == "b":
        return draw(st.booleans())
    if dtype.kind == "f":
        return marker + draw(st.sampled_from([0, 0.25, 0.5, 1e-7]))
    return marker * 10 + draw(st.integers(0, 9))


def tensor(draw: st.DrawFn, spec: TensorSpec, marker: int, rows: int) -> Any:
    """One tensor's rows, carrying ``marker``, mostly of the spec's shape."""
    rows = rows if spec.shape[0] == -1 else spec.shape[0]
    trailing = [d if d != -1 else draw(st.integers(1, 3)) for d in spec.shape[1:]]
    if draw(st.integers(0, 7)) == 0:  # a width or rank MLflow's enforcement refuses
        trailing = [*trailing[:-1], trailing[-1] + 1] if trailing else [2]

    def nested(shape: list[int]) -> Any:
        if not shape:
            return value(draw, spec.type, marker)
        return [nested(shape[1:]) for _ in range(shape[0])]

    return nested([rows, *trailing])


@st.composite
def bodies(draw: st.DrawFn, specs: list[TensorSpec], marker: int) -> dict[str, Any]:
    """One request: its tensors, as many rows each (now and then not), by name or (as
    ``instances``) as a list of objects, one per row."""
    rows = draw(st.integers(1, 3))
    field = draw(st.sampled_from(["inputs", "instances"]))
    if len(specs) > 1:
        odd = draw(st.integers(0, 9)) == 0
        value = {s.name: tensor(draw, s, marker, rows + (odd and i)) for i, s in enumerate(specs)}
        if field == "instances" and not odd and draw(st.booleans()):
            return {field: [{n: v[i] for n, v in value.items()} for i in range(rows)]}
        return {field: value}
    (spec,) = specs
    value = tensor(draw, spec, marker, rows)
    if spec.name is not None and field == "instances" and draw(st.integers(0, 2)) == 0:
        return {field: [{spec.name: row} for row in value]}
    if spec.name is not None and draw(st.booleans()):
        return {field: {spec.name: value}}
    return {field: value}


def read_here(body: dict[str, Any]) -> bool:
    """Whether the body is one this module reads: all but ``instances`` by name of unequal
    lengths, which MLflow's parser refuses."""
    ((field, value),) = body.items()
    if field == "instances" and isinstance(value, dict):
        return len({len(v) for v in value.values()}) == 1
    return True


@st.composite
def cases(draw: st.DrawFn) -> tuple[ModelSignature, list[dict[str, Any]], str, int]:
    specs = draw(st.sampled_from(SPECS))
    signature = ModelSignature(Schema(specs))
    requests = [draw(bodies(specs, marker)) for marker in range(1, draw(st.integers(2, 6)) + 1)]
    return signature, requests, draw(st.sampled_from(SHAPES)), draw(st.integers(1, 8))


def read(body: dict[str, Any], signature: ModelSignature) -> ScoringInput | None:
    """The body as parsed, or None where MLflow's parser refuses it (nothing to predict)."""
    try:
        return parse(json.dumps(body).encode(), "application/json", signature, None)
    except InvalidInput:
        return None


def outcome(call: Any) -> Any:
    try:
        return call()
    except Exception as exc:
        return type(exc).__name__


async def batched(
    model: Model, scoring: list[ScoringInput], max_batch_size: int
) -> tuple[list[Any], Batcher]:
    """Each request's answer through the batcher, as the model host's ``serve`` makes it."""
    batcher = Batcher()
    signature = model.signature

    def run(parts: list[Any], params: dict[str, Any] | None) -> list[Any]:
        return answer_rows(model.predict(model_input(parts, signature), params))

    async def one(item: ScoringInput) -> Any:
        assert item.records is not None
        work = work_for(item.records, signature, max_batch_size)
        rows = await batcher.predict("m/1", work, item.params, run, max_batch_size=max_batch_size)
        return rows_answer(rows)

    answers = await asyncio.gather(*(one(item) for item in scoring), return_exceptions=True)
    return [type(a).__name__ if isinstance(a, Exception) else a for a in answers], batcher


@given(cases())
def test_each_tensor_request_gets_mlflows_answer_to_its_own_input(
    case: tuple[ModelSignature, list[dict[str, Any]], str, int],
) -> None:
    signature, requests, shape, max_batch_size = case
    model = Model(signature, shape)
    parsed = [read(body, signature) for body in requests]
    got = [item is not None and isinstance(item.records, MlflowTensor) for item in parsed]
    event(f"read without MLflow's parser: {all(got)}")
    scoring = [
        item for item in parsed if item is not None and isinstance(item.records, MlflowTensor)
    ]
    assert got == [read_here(body) for body in requests]
    if not scoring:
        return
    alone = [outcome(lambda i=item: answer(model.predict(i.data), False)) for item in scoring]
    together, batcher = asyncio.run(batched(model, scoring, max_batch_size))
    assert together == alone
    stats = batcher.stats()["m/1"]
    event(f"{shape}: shared a call: {stats.calls < len(requests)}")
    if signature.inputs.inputs[0].shape[0] != -1:
        assert stats.calls == len(requests)  # a fixed first dimension is never merged


def test_concurrent_tensor_requests_share_one_call() -> None:
    signature = ModelSignature(Schema(SPECS[0]))
    model = Model(signature, "numbers")
    bodies = [{"inputs": [[float(m), 1.0, 2.0]] * m} for m in (1, 2, 3)]
    scoring = [item for item in (read(body, signature) for body in bodies) if item is not None]
    together, batcher = asyncio.run(batched(model, scoring, 32))
    assert together == [{"predictions": [[m + 3.0, 2.0 if m < 2 else m]] * m} for m in (1, 2, 3)]
    assert batcher.stats()["m/1"].calls == 1

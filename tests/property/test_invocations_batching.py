"""MLflow's scoring protocol, batched, answers each request what it answers alone: concurrent
``/invocations`` bodies that ``serving.scoring_protocol`` reads as records (``records``) share
predict calls (``serving.batch_inputs``, ``serving.batching``), and each request's share of the
answer (``answer_rows``, ``rows_answer``) is MLflow's answer to a prediction of its own input
alone (``answer`` of the model's answer to ``data``), whatever the model returns: a frame, an
array, a series, a list, or something that is not one row per record (then each goes alone).

The model describes each row it sees (dtype and value of every column), so a row computed from
another request's input, or a dtype another request forced, shows. The batching here is the
batcher and the merge the model host uses (its ``serve`` with the scoring protocol's rows).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import event, given
from hypothesis import strategies as st
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from serving.batch_inputs import model_input, work_for
from serving.batching import Batcher
from serving.scoring_protocol import ScoringInput, answer, answer_rows, parse, rows_answer

SIGNATURE = ModelSignature(
    Schema(
        [
            ColSpec("long", "m"),
            ColSpec("string", "s", required=False),
            ColSpec("double", "x", required=False),
            ColSpec("float", "f", required=False),
            ColSpec("boolean", "b", required=False),
        ]
    )
)
OPTIONAL = {
    "s": st.text("ab", max_size=2),
    "x": st.one_of(st.floats(-5, 5), st.integers(-5, 5)),
    "f": st.floats(-5, 5, width=32),
    "b": st.booleans(),
}
SHAPES = ["frame", "array", "series", "list", "dict"]


def describe(data: pd.DataFrame) -> list[str]:
    columns = {c: (str(data[c].dtype), data[c].tolist()) for c in data}
    return [
        ";".join(f"{c}:{t}:{v[i]!r}" for c, (t, v) in columns.items()) for i in range(len(data))
    ]


class Model:
    """Answers a description of each row, in the shape it is told."""

    def __init__(self, shape: str) -> None:
        self.shape = shape

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        rows = describe(data)
        if self.shape == "frame":
            lengths = np.array([len(r) for r in rows], dtype=np.int32)
            return pd.DataFrame({"row": rows, "n": lengths})
        if self.shape == "array":
            return np.array([[r, str(len(r))] for r in rows], dtype=object)
        if self.shape == "series":
            return pd.Series(rows, name="row")
        if self.shape == "list":
            return [{"row": r} for r in rows]
        return {"rows": rows}  # not one answer per record: never cut


@st.composite
def bodies(draw: st.DrawFn, marker: int, names: list[str]) -> dict[str, Any]:
    """One request of rows carrying ``marker``, sending the columns ``names`` (besides m)."""
    rows = [
        {"m": marker, **{n: draw(OPTIONAL[n]) for n in names}}
        for _ in range(draw(st.integers(1, 3)))
    ]
    field = draw(st.sampled_from(["dataframe_records", "dataframe_split", "instances", "inputs"]))
    keys = list(rows[0])
    if field == "dataframe_split":
        return {field: {"columns": keys, "data": [[r[k] for k in keys] for r in rows]}}
    if field == "inputs":
        return {field: {k: [r[k] for r in rows] for k in keys}}
    return {field: rows}


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[dict[str, Any]], str, int]:
    shared = draw(st.lists(st.sampled_from(list(OPTIONAL)), unique=True))
    requests = []
    for marker in range(1, draw(st.integers(2, 6)) + 1):
        names = shared if draw(st.integers(0, 3)) else draw(st.permutations(list(OPTIONAL)))[:2]
        requests.append(draw(bodies(marker, names)))
    return requests, draw(st.sampled_from(SHAPES)), draw(st.integers(1, 8))


def read(body: dict[str, Any]) -> ScoringInput:
    return parse(json.dumps(body).encode(), "application/json", SIGNATURE, None)


async def batched(
    model: Model, scoring: list[ScoringInput], max_batch_size: int
) -> tuple[list[Any], Batcher]:
    """Each request's answer through the batcher, as the model host's ``serve`` makes it."""
    batcher = Batcher()

    def run(parts: list[Any], params: dict[str, Any] | None) -> list[Any]:
        return answer_rows(model.predict(model_input(parts, SIGNATURE), params))

    async def one(item: ScoringInput) -> Any:
        assert item.records is not None
        work = work_for(item.records, SIGNATURE, max_batch_size)
        rows = await batcher.predict("m/1", work, item.params, run, max_batch_size=max_batch_size)
        return rows_answer(rows)

    return list(await asyncio.gather(*(one(item) for item in scoring))), batcher


@given(cases())
def test_each_request_gets_mlflows_answer_to_its_own_input(
    case: tuple[list[dict[str, Any]], str, int],
) -> None:
    requests, shape, max_batch_size = case
    model = Model(shape)
    scoring = [read(body) for body in requests]
    assert all(item.records is not None for item in scoring)
    alone = [answer(model.predict(item.data), False) for item in scoring]
    together, batcher = asyncio.run(batched(model, scoring, max_batch_size))
    assert together == alone
    stats = batcher.stats()["m/1"]
    event(f"{shape}: shared a call: {stats.calls < len(requests)}")

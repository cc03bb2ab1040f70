"""Batching never answers a request from another one: N concurrent requests of random bodies of
every input kind, through the real contract, ``ModelHost.serve`` and ``Batcher``, each get
exactly what they get alone (``docs/architecture.md``, "Dynamic batching per version").

The model answers a function of each row it sees (its columns, dtypes and values) and every
body carries a marker of its own in each row, so a row computed from another request's input,
a column another request sent, or a dtype another request's null forced, all show.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec

from serving.contract import contract_for
from serving.exceptions import ProblemError
from serving.loader import LoadedModel
from serving.model_host import ModelHost
from serving.resolve import Target, resolve
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState

# The PythonModel below has no type hints on purpose (see there).
pytestmark = pytest.mark.filterwarnings("ignore:Add type hints:UserWarning")


def _describe(data: Any) -> list[Any]:
    if isinstance(data, pd.DataFrame):
        columns = {c: (str(data[c].dtype), data[c].tolist()) for c in data}
        return [
            {"row": ";".join(f"{c}:{t}:{v[i]!r}" for c, (t, v) in columns.items())}
            for i in range(len(data))
        ]
    if isinstance(data, np.ndarray):
        if data.ndim == 0:
            return [{"row": f"{data.dtype}:{data.tolist()!r}"}]
        rows = data.tolist()  # an object tensor's rows may be lists already
        return [{"row": f"{data.dtype}{data.shape[1:]}:{row!r}"} for row in rows]
    if isinstance(data, dict):
        return [{"row": repr({k: (str(v.dtype), v.tolist()) for k, v in data.items()})}]
    return [{"row": repr(data)}]


class RowsPythonModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """A real pyfunc ``PythonModel``: its ``predict`` takes the context first. (No type hints:
    MLflow reads them as a signature, and warns about ``Any``.)"""

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return _describe(model_input)


class RowsObject:
    """A plain object with ``predict``, as the loader's ``LoadedModel.model`` may be."""

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> list[Any]:
        return _describe(data)


class _Bound:
    """A ``PythonModel`` called as pyfunc calls it (``predict(data, params=...)``)."""

    def __init__(self, model: RowsPythonModel) -> None:
        self._model = model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> list[Any]:
        return self._model.predict(None, data, params)


SIGNATURES: dict[str, ModelSignature | None] = {
    "columns": ModelSignature(
        Schema(
            [
                ColSpec("long", "m"),
                ColSpec("long", "n", required=False),
                ColSpec("double", "x", required=False),
                ColSpec("string", "s", required=False),
                ColSpec("boolean", "b", required=False),
            ]
        )
    ),
    "unnamed": ModelSignature(Schema([ColSpec("long"), ColSpec("string")])),
    "tensor": ModelSignature(Schema([TensorSpec(np.dtype("float64"), (-1, -1))])),
    "tensor_1d": ModelSignature(Schema([TensorSpec(np.dtype("int64"), (-1,))])),
    "tensor_fixed": ModelSignature(Schema([TensorSpec(np.dtype("float64"), (2, 2))])),
    "tensor_object": ModelSignature(Schema([TensorSpec(np.dtype("object"), (-1, -1))])),
    "tensors": ModelSignature(
        Schema(
            [
                TensorSpec(np.dtype("float64"), (-1,), "a"),
                TensorSpec(np.dtype("float64"), (-1,), "b"),
            ]
        )
    ),
    "free": None,
}


_OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "n": st.integers(-5, 5),
    "x": st.floats(-5, 5, allow_nan=False),
    "s": st.text("ab", max_size=2),
    "b": st.booleans(),
}


def _column_record(marker: int, modes: dict[str, str] | None) -> st.SearchStrategy[Any]:
    # Each optional column absent, null, or set: "absent" and "null" are different requests.
    def column(name: str) -> st.SearchStrategy[Any]:
        mode = (modes or {}).get(name)
        absent, null, value = st.just(...), st.none(), _OPTIONAL[name]
        return {"absent": absent, "null": null, "set": value}.get(
            mode or "", st.one_of(absent, null, value)
        )

    return st.fixed_dictionaries({name: column(name) for name in _OPTIONAL}).map(
        lambda row: {"m": marker} | {k: v for k, v in row.items() if v is not ...}
    )


def _rows(marker: int, width: int | None) -> st.SearchStrategy[list[Any]]:
    def rows(n: int, w: int) -> st.SearchStrategy[list[Any]]:
        return st.lists(
            st.lists(st.integers(0, 9).map(lambda v: marker * 100 + v), min_size=w, max_size=w),
            min_size=n,
            max_size=n,
        )

    widths = st.integers(1, 3) if width is None else st.just(width)
    regular = st.tuples(st.integers(1, 3), widths).flatmap(lambda nw: rows(*nw))
    if width is not None:
        return regular
    # Now and then a ragged tensor: alone it is a 422, batched it must stay one, alone.
    ragged = st.just([[marker * 100], [marker * 100, marker * 100 + 1]])
    return st.one_of(regular, regular, regular, ragged)


def _body(kind: str, marker: int, alike: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """A body for ``kind`` whose every row carries ``marker``; ``alike`` (drawn once for all the
    bodies of an example) makes them of one shape, so that they may share a call."""
    if kind == "columns":
        modes = alike["modes"] if alike else None
        return st.lists(_column_record(marker, modes), min_size=1, max_size=3)
    if kind == "unnamed":
        second = st.text("ab", max_size=2)
        return st.lists(second.map(lambda v: [marker, v]), min_size=1, max_size=3)
    if kind in ("tensor", "tensor_object", "tensor_fixed"):
        width = 2 if kind == "tensor_fixed" else alike["width"] if alike else None
        return _rows(marker, width).map(lambda rows: {"inputs": rows})
    if kind == "tensor_1d":
        return st.lists(st.just(marker), min_size=1, max_size=3).map(lambda v: {"inputs": v})
    if kind == "tensors":
        column = st.lists(st.just(float(marker)), min_size=1, max_size=2)
        return st.fixed_dictionaries({"a": column, "b": column}).map(lambda t: {"inputs": t})
    keys = st.sampled_from(["k", "j", "l"])
    values = st.one_of(st.integers(0, 9), st.text("xy", max_size=2), st.none())
    record = st.dictionaries(keys, values, max_size=2).map(lambda r: {"marker": marker} | r)
    return st.lists(record, min_size=1, max_size=3)


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, list[Any], int, bool]:
    kind = draw(st.sampled_from(sorted(SIGNATURES)))
    count = draw(st.integers(2, 6))
    modes = st.sampled_from(["absent", "null", "set"])
    alike = draw(
        st.none()
        | st.fixed_dictionaries(
            {
                "modes": st.fixed_dictionaries({k: modes for k in _OPTIONAL}),
                "width": st.integers(1, 3),
            }
        )
    )
    bodies = [draw(_body(kind, marker, alike)) for marker in range(1, count + 1)]
    return kind, bodies, draw(st.integers(1, 8)), draw(st.booleans())


def _host(python_model: bool, max_batch_size: int) -> tuple[ModelHost, Target]:
    model: Any = _Bound(RowsPythonModel()) if python_model else RowsObject()

    async def get_model(target: Target) -> LoadedModel:
        return LoadedModel(model, Path("/nonexistent/sigserve-test"))

    entry = VersionEntry(
        version="1", state=VersionState.LIVE, source="models:/m-1", mlmodel_digest="1" * 64
    )
    table = RoutingTable(
        revision=1,
        models={
            "m": ModelEntry(
                name="m", default_version="1", versions={"1": entry}, max_batch_size=max_batch_size
            )
        },
    )
    return ModelHost(get_model), resolve(table, "m", None)


def _outcome(result: Any) -> Any:
    if isinstance(result, ProblemError):
        return ("problem", result.status, result.slug)
    if isinstance(result, BaseException):
        return ("error", type(result).__name__, str(result))
    return result


async def _serve(host: ModelHost, target: Target, kind: str, bodies: list[Any]) -> list[Any]:
    signature = SIGNATURES[kind]
    contract = contract_for("m", signature.to_dict() if signature is not None else None)
    requests = [contract.parse(body) for body in bodies]
    results = await asyncio.gather(
        *(host.serve(target, r.records, r.params, signature) for r in requests),
        return_exceptions=True,
    )
    return [_outcome(r) for r in results]


@given(cases())
def test_each_request_gets_what_it_gets_alone(case: tuple[str, list[Any], int, bool]) -> None:
    kind, bodies, max_batch_size, python_model = case
    event(f"kind: {kind}")
    alone = []
    for body in bodies:
        host, target = _host(python_model, max_batch_size)
        alone.extend(asyncio.run(_serve(host, target, kind, [body])))
    host, target = _host(python_model, max_batch_size)
    together = asyncio.run(_serve(host, target, kind, bodies))
    assert together == alone
    stats = host.batch_stats()[target.model_id]
    event(f"{kind} shared a call: {stats.calls < len(bodies)}")

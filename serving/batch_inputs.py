"""Which requests may share a predict call, per input kind, and the one input they make.

The rule: a request's rows in a shared call are exactly the rows it would give the model alone,
with the same columns and dtypes; requests whose parts cannot be merged that way never share a
call. Per kind of the running version's signature (``docs/architecture.md``, "Dynamic batching
per version"):

- columns, named: records are concatenated into one DataFrame. A column's dtype depends on more
  than the signature (an absent column is left out; a null turns ``long`` into ``Int64``; mixed
  time zones change what ``datetime`` becomes), so requests share a call only when, column by
  column, they agree on absent / set everywhere / null or missing somewhere (and on time zones).
- columns, unnamed: the same, by position.
- one tensor whose shape is ``(-1, ...)`` sent as a list of rows: concatenated along axis 0,
  grouped by the shape of the first row; each request's array is still made alone first and
  merged only when dtypes and trailing shapes agree (else each goes alone, ``Unmergeable``).
- tensors of MLflow's scoring protocol (``serving.tensor_inputs.MlflowTensor``): the arrays
  MLflow's parser makes, each concatenated along axis 0 with others of its name, dtype and
  trailing shape, when the signature's first dimensions are variable and the arrays are of the
  signature's ranks and fixed dimensions, as many rows in each (else alone: MLflow's enforcement
  refuses it, for it alone).
- records of MLflow's scoring protocol (``serving.mlflow_frames.MlflowRecords``): their frame is
  MLflow's, not /serve's, and every dtype in it follows from the column's type alone, so they
  share a call with each other (never with /serve's records) when they send the same columns.
- anything else: a dict of tensors, a scalar or fixed-shape tensor, and free-form input (no
  signature: a list of records there may well be one input, a conversation, not rows) is never
  merged.

A request with more rows than a batch holds goes alone in any case and gets no key (computing
one would cost the event loop time for nothing).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from datetime import datetime
from typing import Any, cast

import numpy as np
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, DataType, TensorSpec

from serving import mlflow_frames, tensor_inputs
from serving.batching import Unmergeable, Work
from serving.frames import to_model_input
from serving.mlflow_frames import MlflowRecords
from serving.tensor_inputs import MlflowTensor

_MISSING = object()
# A column's state in a request: in no record, in every record and never null, or else.
_ABSENT, _SET, _GAPS = 0, 1, 2


def work_for(records: list[Any], signature: ModelSignature | None, max_rows: int) -> Work:
    """``records`` (one validated request) as its share of a call, with the group it may share
    one with."""
    schema = signature.inputs if signature is not None else None
    if isinstance(records, MlflowTensor):
        tensors = tensor_inputs.specs(signature)
        return Work(
            records, tensor_inputs.rows(records), tensor_inputs.group(records, tensors, max_rows)
        )
    if isinstance(records, MlflowRecords):
        fits = 0 < len(records) <= max_rows
        return Work(records, len(records), ("mlflow", tuple(records[0])) if fits else None)
    if schema is None:
        return Work(records, len(records), None)
    if schema.is_tensor_spec():
        return _tensor_work(records, cast(list[TensorSpec], schema.inputs), max_rows)
    if not records or len(records) > max_rows:
        return Work(records, len(records), None)
    columns = cast(list[ColSpec], schema.inputs)
    if schema.has_input_names():
        group = _named_group(records, columns)
    else:
        group = _unnamed_group(records, columns)
    return Work(records, len(records), group)


def model_input(parts: list[Any], signature: ModelSignature | None) -> Any:
    """The one input for the ``parts`` of a call (``Work.part`` of each request sharing it)."""
    schema = signature.inputs if signature is not None else None
    if isinstance(parts[0], MlflowTensor):
        return tensor_inputs.merged(parts)
    if isinstance(parts[0], MlflowRecords):
        columns = mlflow_frames.plain_columns(signature)
        if columns is None:  # not a signature these records were read under
            raise Unmergeable("records of MLflow's protocol for another signature")
        return mlflow_frames.frame([row for part in parts for row in part], columns)
    if len(parts) == 1:
        return to_model_input(parts[0], signature)
    if schema is not None and schema.is_tensor_spec():
        specs = cast(list[TensorSpec], schema.inputs)
        return _concatenated([to_model_input(p, signature) for p in parts], specs[0])
    return to_model_input([record for part in parts for record in part], signature)


def _tensor_work(records: list[Any], specs: list[TensorSpec], max_rows: int) -> Work:
    tensor = records[0] if len(records) == 1 else None
    if not isinstance(tensor, list) or not 0 < len(tensor) <= max_rows or len(specs) != 1:
        return Work(records, 1 if tensor is None else _length(tensor), None)
    shape = specs[0].shape
    row = _first_shape(tensor[0])
    if not shape or shape[0] != -1 or len(shape) != 1 + len(row):
        return Work(records, len(tensor), None)
    return Work(records, len(tensor), ("tensor", row))


def _concatenated(arrays: list[Any], spec: TensorSpec) -> Any:
    first = arrays[0]
    for array in arrays:
        if not (
            isinstance(array, np.ndarray)
            and array.ndim == len(spec.shape)
            and array.dtype == first.dtype
            and array.shape[1:] == first.shape[1:]
        ):
            raise Unmergeable("tensors of other dtypes or trailing shapes")
    return np.concatenate(arrays, axis=0)


def _first_shape(value: Any) -> tuple[int, ...]:
    """The shape numpy would find along the first element at each depth (cheap, a guess: the
    arrays made in the worker thread are what is checked)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _length(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1


def _named_group(records: list[Any], columns: list[ColSpec]) -> Hashable | None:
    if not all(isinstance(r, Mapping) for r in records):
        return None
    return ("columns", *(_state([r.get(c.name, _MISSING) for r in records], c) for c in columns))


def _unnamed_group(records: list[Any], columns: list[ColSpec]) -> Hashable:
    rows = [r if isinstance(r, list | tuple) else [r] for r in records]
    widths = frozenset(len(r) for r in rows)
    states = (
        _state([r[i] if i < len(r) else _MISSING for r in rows], c) for i, c in enumerate(columns)
    )
    return ("unnamed", widths, *states)


def _state(values: list[Any], column: ColSpec) -> Hashable:
    if all(v is _MISSING for v in values):
        return _ABSENT
    state = _GAPS if any(v is None or v is _MISSING for v in values) else _SET
    if column.type == DataType.datetime:
        # Naive, one offset, several: each makes pandas read the column another way.
        zones = frozenset(
            v.utcoffset() if isinstance(v, datetime) else type(v).__name__
            for v in values
            if v is not None and v is not _MISSING
        )
        return (state, zones)
    return state

"""Tensor bodies of MLflow's scoring protocol read straight into the array MLflow's parser makes,
and batched along axis 0.

``mlflow models serve`` reads ``{"inputs": ...}`` and ``{"instances": ...}`` for a tensor
signature with ``mlflow.utils.proto_json_utils``: a deep copy of the JSON, then
``np.array(value, dtype=spec.type)`` (``convert_data_type``), keyed by the tensor's name when the
signature names it. For the bodies where that outcome is plain, this module makes the same call
directly, without the copy or the parser's detours: a signature of ONE tensor of a numeric or
boolean dtype, and a body whose value is a non-empty list none of whose items is a JSON object
(for a named tensor, also ``{name: list}``). Anything else (several tensors, strings, a scalar,
a list of objects, extra names) is ``None`` and MLflow's own parser reads it, with every quirk;
so does a value ``np.array`` refuses (ragged lists, a string where a number goes), so that its
refusal is the one it always was.

``MlflowTensor`` carries the array as a request's records (one item, as /serve's tensor records
are one tensor), so that it takes the batched path of ``ModelHost.serve``: requests whose arrays
MLflow's enforcement will take as they are (``conforms``: the signature's rank and fixed
dimensions) and whose first dimension is variable (``-1``) share a predict call, concatenated
along axis 0, each getting back exactly its own rows (``serving.batch_inputs``). The property
tests ``tests/property/test_tensor_scoring.py`` (this parse against MLflow's, on generated
signatures and bodies) and ``tests/property/test_tensor_batching.py`` (every merged request
against its answer alone) hold it to that.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, cast

import numpy as np
from mlflow.models import ModelSignature
from mlflow.types.schema import TensorSpec

from serving.batching import Unmergeable

# numpy kinds MLflow's parser gives the same array for, whatever the JSON numbers (bool, signed,
# unsigned, float). Strings and objects go through MLflow's parser.
_NUMERIC_KINDS = frozenset("biuf")


class MlflowTensor(list[Any]):
    """One request's tensor, as MLflow's parser makes it: ``[array]``, with the name the model
    gets it under (``{name: array}``) or None (the bare array)."""

    def __init__(self, array: np.ndarray[Any, Any], name: str | None) -> None:
        super().__init__([array])
        self.name = name

    @property
    def array(self) -> np.ndarray[Any, Any]:
        return cast("np.ndarray[Any, Any]", self[0])

    def model_input(self) -> Any:
        """What MLflow's scoring server calls ``predict`` with for this request."""
        return self.array if self.name is None else {self.name: self.array}


def single_spec(signature: ModelSignature | None) -> TensorSpec | None:
    """The signature's one input tensor, when it is of a numeric or boolean dtype."""
    schema = signature.inputs if signature is not None else None
    if schema is None or not schema.is_tensor_spec() or len(schema.inputs) != 1:
        return None
    spec = cast(TensorSpec, schema.inputs[0])
    return spec if spec.type.kind in _NUMERIC_KINDS else None


def read(field: str, value: Any, spec: TensorSpec) -> MlflowTensor | None:
    """``value`` of the body's ``field`` (``inputs`` or ``instances``) as the array MLflow's
    parser makes of it under ``spec``, or None when that parser must read it."""
    if field not in ("inputs", "instances"):
        return None
    name = spec.name
    if isinstance(value, dict):
        # {name: list}: the parser's column form, one column, the tensor's own name.
        if name is None or len(value) != 1 or name not in value:
            return None
        value = value[name]
        if not isinstance(value, list):
            return None
    if not isinstance(value, list) or not value or any(isinstance(item, dict) for item in value):
        # An empty list is a list of no records to MLflow's parser, not an empty array.
        return None
    try:
        array = np.array(value, dtype=spec.type)
    except (ValueError, TypeError, OverflowError):
        return None  # MLflow's parser refuses it, in its own words
    return MlflowTensor(array, name)


def conforms(array: np.ndarray[Any, Any], spec: TensorSpec) -> bool:
    """Whether MLflow's enforcement takes ``array`` for ``spec`` as it is: its rank, and every
    dimension the spec fixes (``mlflow.models.utils._enforce_tensor_spec``)."""
    shape = spec.shape
    if array.ndim != len(shape):
        return False
    return all(want in (-1, got) for want, got in zip(shape, array.shape, strict=True))


def group(tensor: MlflowTensor, spec: TensorSpec | None, max_rows: int) -> Hashable | None:
    """The group of requests ``tensor`` may share a call with, or None (alone): requests whose
    arrays conform to a spec whose first dimension is variable, of one dtype and trailing shape,
    under one name."""
    array = tensor.array
    if spec is None or not spec.shape or spec.shape[0] != -1 or array.dtype != spec.type:
        return None
    if not conforms(array, spec) or not 0 < len(array) <= max_rows:
        return None
    return ("mlflow-tensor", tensor.name, array.dtype.str, array.shape[1:])


def rows(tensor: MlflowTensor) -> int:
    """The rows a request's answer has, for a model that answers row by row."""
    return len(tensor.array) if tensor.array.ndim else 1


def merged(parts: list[MlflowTensor]) -> Any:
    """The model's input for several requests' tensors: one array along axis 0 (under their
    name); ``Unmergeable`` when they differ in anything but their rows."""
    first = parts[0]
    if len(parts) == 1:
        return first.model_input()
    for part in parts[1:]:
        array = part.array
        if (
            part.name != first.name
            or array.dtype != first.array.dtype
            or array.ndim == 0
            or array.shape[1:] != first.array.shape[1:]
        ):
            raise Unmergeable("tensors of other names, dtypes or trailing shapes")
    joined = np.concatenate([part.array for part in parts], axis=0)
    return joined if first.name is None else {first.name: joined}

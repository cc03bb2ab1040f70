"""Tensor bodies of MLflow's scoring protocol read straight into the array MLflow's parser makes,
and batched along axis 0.

``mlflow models serve`` reads ``{"inputs": ...}`` and ``{"instances": ...}`` for a tensor
signature with ``mlflow.utils.proto_json_utils``: a deep copy of the JSON, then
``np.array(value, dtype=spec.type)`` (``convert_data_type``), keyed by the tensor's name when the
signature names it. For the bodies where that outcome is plain, this module makes the same call
directly, without the copy or the parser's detours: a signature of tensors of numeric or boolean
dtypes (several ones all named), and a body whose value is, for one tensor, a non-empty list none
of whose items is a JSON object, or, for named tensors, ``{name: list}`` with exactly their names
(of any lengths as ``inputs``, which MLflow takes; of equal lengths as ``instances``, which it
refuses otherwise), or ``instances`` as a list of objects (what TF-serving clients send), each
with exactly the tensors' names, which MLflow's parser turns into one array per name. Anything
else (strings, a scalar, ``inputs`` as a list of objects, missing or extra names) is ``None``
and MLflow's own parser reads it, with every quirk it has; so does a value ``np.array`` refuses
(ragged lists, a string where a number goes), so that its refusal is the one it always was.

``MlflowTensor`` carries the model's input as a request's records (one item, as /serve's tensor
records are one tensor), so that it takes the batched path of ``ModelHost.serve``: requests
whose arrays MLflow's enforcement will take as they are (``conforms``: the signature's rank and
fixed dimensions), as many rows in each tensor, and whose first dimensions are variable (``-1``)
share a predict call (tensors of unequal lengths never do), each tensor concatenated along
axis 0, each request getting back exactly its own rows (``serving.batch_inputs``). The property
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
    """One request's tensors, as MLflow's parser makes them: ``[model input]``, the input being
    the bare array of an unnamed tensor or the arrays by name (``arrays``, keyed None for the
    bare one)."""

    def __init__(self, arrays: dict[str | None, np.ndarray[Any, Any]]) -> None:
        bare = None in arrays
        super().__init__([arrays[None] if bare else dict(arrays)])
        self.arrays = arrays

    def model_input(self) -> Any:
        """What MLflow's scoring server calls ``predict`` with for this request."""
        return self[0]


def specs(signature: ModelSignature | None) -> dict[str | None, TensorSpec] | None:
    """The signature's input tensors by name (None: the one unnamed), when every one is of a
    numeric or boolean dtype and several are all named."""
    schema = signature.inputs if signature is not None else None
    if schema is None or not schema.is_tensor_spec():
        return None
    found = {s.name: s for s in cast(list[TensorSpec], schema.inputs)}
    if len(found) != len(schema.inputs) or (len(found) > 1 and None in found):
        return None
    return found if all(s.type.kind in _NUMERIC_KINDS for s in found.values()) else None


def read(field: str, value: Any, tensors: dict[str | None, TensorSpec]) -> MlflowTensor | None:
    """``value`` of the body's ``field`` (``inputs`` or ``instances``) as the arrays MLflow's
    parser makes of it for the signature's ``tensors`` (``specs``), or None when that parser
    must read it."""
    if field not in ("inputs", "instances"):
        return None
    if isinstance(value, list) and value and isinstance(value[0], dict):
        # Rows of named tensors: only ``instances`` makes them columns (``inputs`` keeps a list
        # of dicts, for the enforcement to judge).
        return _rows(value, tensors) if field == "instances" else None
    if isinstance(value, dict):
        # The parser's column form: every tensor by its own name, and nothing else.
        if None in tensors or value.keys() != tensors.keys():
            return None
        columns = dict(value)
    elif len(tensors) == 1:
        (name,) = tensors  # a list is the one tensor's, named or not
        columns = {name: value}
    else:
        return None
    for column in columns.values():
        if not isinstance(column, list) or not column or any(isinstance(i, dict) for i in column):
            # An empty list is a list of no records to MLflow's parser, not an empty array.
            return None
    arrays = _arrays(columns, tensors)
    if arrays is None:
        return None
    if field == "instances" and len({len(a) for a in arrays.values()}) != 1:
        return None  # ``instances`` of unequal lengths: the parser's own refusal
    # ``inputs`` of unequal lengths are MLflow's too: read, and predicted alone (``group``).
    return MlflowTensor(arrays)


def _rows(items: list[Any], tensors: dict[str | None, TensorSpec]) -> MlflowTensor | None:
    """``instances`` as a list of objects, each with every named tensor's row and nothing else:
    the columns MLflow's parser makes of them (``parse_instances_data``), keyed in the order of
    the first object's names, as its ``defaultdict`` keys them."""
    if None in tensors:
        return None  # no names to match: the parser keeps each value's own dtype
    names = list(items[0])
    if names and set(names) != tensors.keys():
        return None
    columns: dict[str | None, list[Any]] = {name: [] for name in names}
    for item in items:
        # Another set of names gives columns of other lengths (refused) or extra ones.
        if not isinstance(item, dict) or item.keys() != columns.keys():
            return None
        for name in names:
            columns[name].append(item[name])
    # The parser makes each row's array, then stacks them: one array per column is the same
    # array (the property test holds it to that), in one call instead of one per row.
    return MlflowTensor(arrays) if names and (arrays := _arrays(columns, tensors)) else None


def _arrays(
    columns: dict[str | None, list[Any]], tensors: dict[str | None, TensorSpec]
) -> dict[str | None, np.ndarray[Any, Any]] | None:
    arrays: dict[str | None, np.ndarray[Any, Any]] = {}
    for name, column in columns.items():
        try:
            arrays[name] = np.array(column, dtype=tensors[name].type)
        except (ValueError, TypeError, OverflowError):
            return None  # MLflow's parser refuses it, in its own words
    return arrays


def conforms(array: np.ndarray[Any, Any], spec: TensorSpec) -> bool:
    """Whether MLflow's enforcement takes ``array`` for ``spec`` as it is: its rank, and every
    dimension the spec fixes (``mlflow.models.utils._enforce_tensor_spec``)."""
    shape = spec.shape
    if array.ndim != len(shape):
        return False
    return all(want in (-1, got) for want, got in zip(shape, array.shape, strict=True))


def group(
    tensor: MlflowTensor, tensors: dict[str | None, TensorSpec] | None, max_rows: int
) -> Hashable | None:
    """The group of requests ``tensor`` may share a call with, or None (alone): requests whose
    arrays, as many rows each, conform to specs whose first dimension is variable, with the same
    names, dtypes and trailing shapes."""
    if tensors is None or tensor.arrays.keys() != tensors.keys():
        return None
    key: list[Hashable] = ["mlflow-tensor"]
    for name, array in tensor.arrays.items():
        spec = tensors[name]
        if not spec.shape or spec.shape[0] != -1 or array.dtype != spec.type:
            return None
        if not conforms(array, spec) or not 0 < len(array) <= max_rows:
            return None
        key.append((name, array.dtype.str, array.shape[1:]))
    if len({len(a) for a in tensor.arrays.values()}) != 1:
        return None
    return tuple(key)


def rows(tensor: MlflowTensor) -> int:
    """The rows a request's answer has, for a model that answers row by row (the longest
    tensor's, when they differ: such a request is predicted alone anyway)."""
    return max(len(a) if a.ndim else 1 for a in tensor.arrays.values())


def merged(parts: list[MlflowTensor]) -> Any:
    """The model's input for several requests' tensors: each tensor's arrays joined along axis
    0; ``Unmergeable`` when they differ in anything but their rows."""
    first = parts[0]
    if len(parts) == 1:
        return first.model_input()
    names = list(first.arrays)
    for part in parts[1:]:
        if list(part.arrays) != names or any(
            part.arrays[n].dtype != first.arrays[n].dtype
            or part.arrays[n].ndim == 0
            or part.arrays[n].shape[1:] != first.arrays[n].shape[1:]
            for n in names
        ):
            raise Unmergeable("tensors of other names, dtypes or trailing shapes")
    joined = {n: np.concatenate([part.arrays[n] for part in parts], axis=0) for n in names}
    return MlflowTensor(joined).model_input()

"""Hypothesis strategies: MLflow signatures, pairs (contract, version), and requests a client
written against the contract sends.

Signatures are built with ``mlflow.types`` and handed out in ``ModelSignature.to_dict()`` form,
the form the registry stores and ``controller.compatibility.check`` reads. A version is mostly a
*mutation* of its contract (one or two edits: add/remove/rename a column, flip required, retype,
nest a change inside Array/Object/Map, switch named/unnamed or column/tensor, change a tensor's
dtype/shape, add/remove/retype a param, change a default, scalar <-> list), sometimes equal,
sometimes unrelated. Nothing here knows which edits are compatible: MLflow decides that.

Requests are drawn from the contract's own types, in two forms: in-process (a DataFrame typed as
the contract says, an ndarray or a dict of ndarrays for tensors) and JSON (a scoring-server body).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import strategies as st
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.types.schema import AnyType, Array, Map, Object, Property

ColType = DataType | Array | Object | Map | AnyType
Spec = ColSpec | TensorSpec
SignatureDict = dict[str, Any]
Draw = Callable[[st.SearchStrategy[Any]], Any]

DATA_TYPES: list[DataType] = list(DataType)
PARAM_TYPES = [t for t in DATA_TYPES if t is not DataType.binary]  # MLflow refuses binary params
TENSOR_DTYPES = ["int32", "int64", "float32", "float64", "bool", "object"]
COLUMN_NAMES = ["a", "b", "c", "d", "e"]
PROPERTY_NAMES = ["x", "y", "z"]
PARAM_NAMES = ["p", "q", "r", "s"]
MAP_KEYS = st.sampled_from(["k", "l", "m"])
ANY: AnyType = AnyType()  # type: ignore[no-untyped-call]

# Types a column is often changed to: the numeric ladder and the text-like types, so that
# widenings and narrowings are common; any other type is drawn too, less often.
NEIGHBOURS: dict[DataType, list[DataType]] = {
    DataType.boolean: [DataType.long, DataType.integer, DataType.string],
    DataType.integer: [DataType.long, DataType.double, DataType.float],
    DataType.long: [DataType.integer, DataType.double, DataType.float],
    DataType.float: [DataType.double, DataType.integer, DataType.long],
    DataType.double: [DataType.float, DataType.long, DataType.integer],
    DataType.string: [DataType.binary, DataType.datetime],
    DataType.binary: [DataType.string],
    DataType.datetime: [DataType.string, DataType.long],
}
COLUMN_OF_DTYPE = {
    "int32": DataType.integer,
    "int64": DataType.long,
    "float32": DataType.float,
    "float64": DataType.double,
    "bool": DataType.boolean,
    "object": DataType.string,
}
DTYPE_OF_COLUMN = {v: k for k, v in COLUMN_OF_DTYPE.items()}
NEIGHBOUR_DTYPES = {
    "int32": ["int64", "float64"],
    "int64": ["int32", "float64"],
    "float32": ["float64", "int32"],
    "float64": ["float32", "int64"],
    "bool": ["int64", "object"],
    "object": ["bool", "float64"],
}


def weighted(*choices: tuple[int, Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from([value for weight, value in choices for _ in range(weight)])


# --- types ----------------------------------------------------------------------------------


def column_types(depth: int = 0) -> st.SearchStrategy[ColType]:
    """A column (or property, item, map value) type; nested up to two levels."""

    @st.composite
    def build(draw: Draw) -> ColType:
        nested = [(2, "array"), (2, "object"), (1, "map")] if depth < 2 else []
        kind = draw(weighted((6, "scalar"), (1, "any"), *nested))
        if kind == "scalar":
            return draw(st.sampled_from(DATA_TYPES))  # type: ignore[no-any-return]
        if kind == "any":
            return ANY
        inner = column_types(depth + 1)
        if kind == "array":
            return Array(draw(inner))
        if kind == "map":
            return Map(draw(inner))
        names = draw(st.lists(st.sampled_from(PROPERTY_NAMES), min_size=1, max_size=3, unique=True))
        return Object([Property(n, draw(inner), draw(st.booleans())) for n in names])

    return build()


def mutate_type(draw: Draw, t: ColType, depth: int = 0) -> ColType:
    """Another type: a neighbour, any other, wrapped or unwrapped, or a change nested inside."""
    if isinstance(t, DataType):
        how = draw(weighted((6, "neighbour"), (2, "other"), (1, "wrap"), (1, "any")))
        if how == "neighbour":
            return draw(st.sampled_from(NEIGHBOURS[t]))  # type: ignore[no-any-return]
        if how == "other":
            return draw(st.sampled_from([d for d in DATA_TYPES if d is not t]))  # type: ignore[no-any-return]
        return Array(t) if how == "wrap" else ANY
    if isinstance(t, AnyType):
        return draw(column_types(depth))  # type: ignore[no-any-return]
    if isinstance(t, Array):
        if draw(weighted((4, True), (1, False))):
            return Array(mutate_type(draw, t.dtype, depth + 1))
        return t.dtype
    if isinstance(t, Map):
        how = draw(weighted((4, "inside"), (1, "object"), (1, "array")))
        if how == "inside":
            return Map(mutate_type(draw, t.value_type, depth + 1))
        if how == "array":
            return Array(t.value_type)
        return Object([Property(draw(st.sampled_from(PROPERTY_NAMES)), t.value_type, False)])
    props = {p.name: p for p in t.properties}
    how = draw(weighted((2, "add"), (2, "remove"), (2, "flip"), (3, "retype"), (1, "rename")))
    free = [n for n in PROPERTY_NAMES if n not in props]
    name = draw(st.sampled_from(sorted(props)))
    if how == "add" and free:
        new = Property(
            draw(st.sampled_from(free)), draw(column_types(depth + 1)), draw(st.booleans())
        )
        return Object([*props.values(), new])
    if how == "remove" and len(props) > 1:
        return Object([p for n, p in props.items() if n != name])
    if how == "flip":
        p = props[name]
        props[name] = Property(name, p.dtype, not p.required)
    elif how == "rename" and free:
        p = props.pop(name)
        new_name = draw(st.sampled_from(free))
        props[new_name] = Property(new_name, p.dtype, p.required)
    else:
        p = props[name]
        props[name] = Property(name, mutate_type(draw, p.dtype, depth + 1), p.required)
    return Object(list(props.values()))


# --- schemas --------------------------------------------------------------------------------


@st.composite
def tensor_shapes(draw: Draw) -> tuple[int, ...]:
    rest = draw(st.lists(weighted((2, -1), (3, 1), (3, 2), (2, 3)), max_size=2))
    first = draw(weighted((5, -1), (1, 2)))
    return (first, *rest)


@st.composite
def tensor_specs(draw: Draw, name: str | None) -> TensorSpec:
    return TensorSpec(np.dtype(draw(st.sampled_from(TENSOR_DTYPES))), draw(tensor_shapes()), name)


@st.composite
def schemas(draw: Draw, *, max_size: int = 4) -> Schema:
    kind = draw(weighted((6, "named"), (1, "unnamed"), (1, "tensor"), (1, "named tensor")))
    if kind == "named":
        names = draw(
            st.lists(st.sampled_from(COLUMN_NAMES), min_size=1, max_size=max_size, unique=True)
        )
        return Schema(
            [ColSpec(draw(column_types()), n, draw(weighted((3, True), (1, False)))) for n in names]
        )
    if kind == "unnamed":
        types = draw(st.lists(column_types(), min_size=1, max_size=3))
        return Schema([ColSpec(t) for t in types])
    if kind == "tensor":
        return Schema([draw(tensor_specs(None))])
    names = draw(st.lists(st.sampled_from(COLUMN_NAMES), min_size=1, max_size=3, unique=True))
    return Schema([draw(tensor_specs(n)) for n in names])


def _tensor_to_column(spec: TensorSpec, named: bool) -> ColSpec:
    t: ColType = COLUMN_OF_DTYPE[spec.type.name]
    if len(spec.shape) > 1:
        t = Array(t)
    return ColSpec(t, spec.name if named else None)


def _column_to_tensor(spec: ColSpec, name: str | None) -> TensorSpec:
    dtype = (
        DTYPE_OF_COLUMN.get(spec.type, "object") if isinstance(spec.type, DataType) else "object"
    )
    return TensorSpec(np.dtype(dtype), (-1,), name)


def _mutate_shape(draw: Draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    dims = list(shape)
    how = draw(st.sampled_from(["fix", "free", "resize", "add", "drop"]))
    i = draw(st.integers(0, len(dims) - 1))
    if how == "fix" and dims[i] == -1:
        dims[i] = draw(st.integers(1, 3))
    elif how == "free" and dims[i] != -1:
        dims[i] = -1
    elif how == "resize" and dims[i] != -1:
        dims[i] = dims[i] % 3 + 1
    elif how == "drop" and len(dims) > 1:
        dims.pop()
    else:
        dims.append(draw(st.sampled_from([-1, 1, 2, 3])))
    return tuple(dims)


def mutate_schema(draw: Draw, schema: Schema) -> Schema:
    specs: list[Spec] = list(schema.inputs)
    if schema.is_tensor_spec():
        return _mutate_tensors(draw, specs)  # type: ignore[arg-type]
    if schema.has_input_names():
        return _mutate_named_columns(draw, specs)  # type: ignore[arg-type]
    return _mutate_unnamed_columns(draw, specs)  # type: ignore[arg-type]


def _mutate_named_columns(draw: Draw, cols: list[ColSpec]) -> Schema:
    how = draw(
        weighted(
            (3, "add"),
            (3, "remove"),
            (3, "flip"),
            (6, "retype"),
            (2, "rename"),
            (1, "reorder"),
            (1, "unnamed"),
            (1, "tensor"),
        )
    )
    names = [c.name for c in cols]
    free = [n for n in COLUMN_NAMES if n not in names]
    i = draw(st.integers(0, len(cols) - 1))
    c = cols[i]
    if how == "add" and free:
        cols.append(ColSpec(draw(column_types()), draw(st.sampled_from(free)), draw(st.booleans())))
    elif how == "remove" and len(cols) > 1:
        cols.pop(i)
    elif how == "flip":
        cols[i] = ColSpec(c.type, c.name, not c.required)
    elif how == "rename" and free:
        cols[i] = ColSpec(c.type, draw(st.sampled_from(free)), c.required)
    elif how == "reorder" and len(cols) > 1:
        cols = draw(st.permutations(cols))
    elif how == "unnamed":
        cols = [ColSpec(x.type) for x in cols]
    elif how == "tensor":
        return Schema([_column_to_tensor(x, x.name) for x in cols])
    else:
        cols[i] = ColSpec(mutate_type(draw, c.type), c.name, c.required)
    return Schema(list(cols))


def _mutate_unnamed_columns(draw: Draw, cols: list[ColSpec]) -> Schema:
    how = draw(
        weighted((2, "add"), (2, "remove"), (5, "retype"), (1, "swap"), (2, "named"), (1, "tensor"))
    )
    i = draw(st.integers(0, len(cols) - 1))
    if how == "add":
        cols.append(ColSpec(draw(column_types())))
    elif how == "remove" and len(cols) > 1:
        cols.pop(i)
    elif how == "swap" and len(cols) > 1:
        cols[0], cols[-1] = cols[-1], cols[0]
    elif how == "named":
        names = draw(st.permutations(COLUMN_NAMES))
        return Schema([ColSpec(c.type, names[j], draw(st.booleans())) for j, c in enumerate(cols)])
    elif how == "tensor":
        if len(cols) == 1:
            return Schema([_column_to_tensor(cols[0], None)])
        return Schema([_column_to_tensor(c, COLUMN_NAMES[j]) for j, c in enumerate(cols)])
    else:
        cols[i] = ColSpec(mutate_type(draw, cols[i].type))
    return Schema(list(cols))


def _mutate_tensors(draw: Draw, tensors: list[TensorSpec]) -> Schema:
    named = tensors[0].name is not None
    how = draw(
        weighted(
            (4, "dtype"),
            (4, "shape"),
            (1, "rename"),
            (2, "add"),
            (2, "remove"),
            (1, "naming"),
            (1, "columns"),
        )
    )
    i = draw(st.integers(0, len(tensors) - 1))
    t = tensors[i]
    names = [x.name for x in tensors]
    free = [n for n in COLUMN_NAMES if n not in names]
    dtype = t.type.name
    if how == "dtype":
        new = draw(
            st.one_of(st.sampled_from(NEIGHBOUR_DTYPES[dtype]), st.sampled_from(TENSOR_DTYPES))
        )
        tensors[i] = TensorSpec(np.dtype(new), t.shape, t.name)
    elif how == "rename" and named:
        tensors[i] = TensorSpec(t.type, t.shape, draw(st.sampled_from(free)))
    elif how == "add" and named and free:
        tensors.append(draw(tensor_specs(draw(st.sampled_from(free)))))
    elif how == "remove" and len(tensors) > 1:
        tensors.pop(i)
    elif how == "naming" and len(tensors) == 1:
        tensors = [
            TensorSpec(t.type, t.shape, None if named else draw(st.sampled_from(COLUMN_NAMES)))
        ]
    elif how == "columns":
        # Same data, column-based: named tensors become named columns; an unnamed tensor
        # becomes an unnamed column or a named one.
        if named:
            return Schema([_tensor_to_column(x, True) for x in tensors])
        col = _tensor_to_column(t, False)
        if draw(st.booleans()):
            col = ColSpec(col.type, draw(st.sampled_from(COLUMN_NAMES)))
        return Schema([col])
    else:
        tensors[i] = TensorSpec(t.type, _mutate_shape(draw, t.shape), t.name)
    return Schema(list(tensors))


# --- params ---------------------------------------------------------------------------------

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


def scalar_values(t: DataType) -> st.SearchStrategy[Any]:
    """Python values of a DataType (abstract: ints, floats, str, bytes, datetimes)."""
    if t is DataType.boolean:
        return st.booleans()
    if t is DataType.integer:
        # Most beyond 0/1: MLflow accepts long -> double when every value is 0 or 1.
        return st.one_of(st.integers(-3, 3), st.integers(*_INT32))
    if t is DataType.long:
        return st.one_of(st.integers(-3, 3), st.integers(*_INT32), st.integers(*_INT64))
    if t is DataType.float:
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    if t is DataType.double:
        return st.floats(allow_nan=False, allow_infinity=False)
    if t is DataType.string:
        return st.text(st.characters(codec="utf-8"), max_size=4)
    if t is DataType.binary:
        return st.binary(max_size=4)
    return st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2200, 1, 1))


@st.composite
def param_values(draw: Draw, t: DataType, shape: tuple[int, ...] | None) -> Any:
    if shape is None:
        return draw(scalar_values(t))
    return draw(st.lists(scalar_values(t), max_size=3))


@st.composite
def param_specs(draw: Draw, name: str) -> ParamSpec:
    t = draw(st.sampled_from(PARAM_TYPES))
    shape = draw(weighted((3, None), (1, (-1,))))
    return _param_spec(draw, name, t, shape)


def _param_spec(draw: Draw, name: str, t: DataType, shape: tuple[int, ...] | None) -> ParamSpec:
    # MLflow cannot write a None default for a list param (ParamSpec refuses it) nor for a
    # datetime param (ParamSpec.to_dict calls default.isoformat()).
    no_default = (
        shape is None and t is not DataType.datetime and draw(weighted((1, True), (3, False)))
    )
    return ParamSpec(name, t, None if no_default else draw(param_values(t, shape)), shape)


@st.composite
def param_schemas(draw: Draw) -> ParamSchema | None:
    if draw(weighted((1, True), (1, False))):
        return None
    names = draw(st.lists(st.sampled_from(PARAM_NAMES), min_size=1, max_size=3, unique=True))
    return ParamSchema([draw(param_specs(n)) for n in names])


def mutate_params(draw: Draw, params: ParamSchema | None) -> ParamSchema | None:
    if params is None:
        names = draw(st.lists(st.sampled_from(PARAM_NAMES), min_size=1, max_size=2, unique=True))
        return ParamSchema([draw(param_specs(n)) for n in names])
    specs = {p.name: p for p in params.params}
    how = draw(
        weighted(
            (2, "add"), (2, "remove"), (3, "retype"), (3, "default"), (2, "shape"), (1, "drop")
        )
    )
    name = draw(st.sampled_from(sorted(specs)))
    p = specs[name]
    free = [n for n in PARAM_NAMES if n not in specs]
    if how == "add" and free:
        new = draw(st.sampled_from(free))
        specs[new] = draw(param_specs(new))
    elif how == "remove":
        del specs[name]
    elif how == "retype":
        assert isinstance(p.dtype, DataType)
        pool = [t for t in NEIGHBOURS[p.dtype] if t in PARAM_TYPES] or PARAM_TYPES
        t = draw(st.one_of(st.sampled_from(pool), st.sampled_from(PARAM_TYPES)))
        specs[name] = _param_spec(draw, name, t, p.shape)
    elif how == "shape":
        assert isinstance(p.dtype, DataType)
        specs[name] = _param_spec(draw, name, p.dtype, None if p.shape else (-1,))
    elif how == "drop":
        return None
    else:
        assert isinstance(p.dtype, DataType)
        specs[name] = _param_spec(draw, name, p.dtype, p.shape)
    return ParamSchema(list(specs.values())) if specs else None


# --- signatures and pairs -------------------------------------------------------------------


@dataclass(frozen=True)
class Sig:
    inputs: Schema
    outputs: Schema | None
    params: ParamSchema | None

    def to_dict(self) -> SignatureDict:
        signature = ModelSignature(self.inputs, self.outputs, self.params)  # type: ignore[arg-type]
        as_dict: SignatureDict = signature.to_dict()
        return as_dict


@st.composite
def sigs(draw: Draw) -> Sig:
    outputs = draw(st.one_of(st.none(), schemas(max_size=2)))
    return Sig(draw(schemas()), outputs, draw(param_schemas()))


def mutate(draw: Draw, sig: Sig) -> Sig | None:
    how = draw(weighted((12, "inputs"), (5, "params"), (2, "outputs"), (1, "no signature")))
    if how == "inputs":
        return Sig(mutate_schema(draw, sig.inputs), sig.outputs, sig.params)
    if how == "params":
        return Sig(sig.inputs, sig.outputs, mutate_params(draw, sig.params))
    if how == "outputs":
        if sig.outputs is None or draw(st.booleans()):
            outputs = None if sig.outputs is not None else draw(schemas(max_size=2))
        else:
            outputs = mutate_schema(draw, sig.outputs)
        return Sig(sig.inputs, outputs, sig.params)
    return None


@st.composite
def signature_pairs(draw: Draw) -> tuple[SignatureDict | None, SignatureDict | None]:
    """(contract, version): mostly a version that is one or two edits away from its contract."""
    if draw(weighted((30, False), (1, True))):
        return None, draw(st.one_of(st.none(), sigs().map(Sig.to_dict)))
    contract: Sig = draw(sigs())
    how = draw(weighted((16, "mutation"), (1, "equal"), (1, "unrelated")))
    if how == "equal":
        return contract.to_dict(), contract.to_dict()
    if how == "unrelated":
        return contract.to_dict(), draw(sigs()).to_dict()
    version: Sig | None = contract
    for _ in range(draw(weighted((3, 1), (1, 2)))):
        if version is not None:
            version = mutate(draw, version)
    return contract.to_dict(), None if version is None else version.to_dict()


# --- requests -------------------------------------------------------------------------------


@st.composite
def values(draw: Draw, t: ColType, optional: bool = False) -> Any:
    """An abstract value of a column type (JSON-like, plus bytes and datetimes)."""
    none_ok = isinstance(t, (Array, Object, Map, AnyType)) or t not in (
        DataType.boolean,
        DataType.integer,
        DataType.long,
    )
    if optional and none_ok and draw(weighted((9, False), (1, True))):
        return None
    if isinstance(t, DataType):
        return draw(scalar_values(t))
    if isinstance(t, Array):
        return draw(st.lists(values(t.dtype), max_size=3))
    if isinstance(t, Map):
        return draw(st.dictionaries(MAP_KEYS, values(t.value_type), max_size=2))
    if isinstance(t, Object):
        return {
            p.name: draw(values(p.dtype, not p.required))
            for p in t.properties
            if p.required or draw(st.booleans())
        }
    return draw(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-5, 5),
            st.text(max_size=3),
            st.lists(st.text(max_size=2), max_size=2),
        )
    )


def to_json_value(t: ColType | None, v: Any) -> Any:
    """What a JSON client sends for a value: base64 for bytes, ISO text for datetimes."""
    if v is None:
        return None
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(t, Array):
        return [to_json_value(t.dtype, x) for x in v]
    if isinstance(t, Map):
        return {k: to_json_value(t.value_type, x) for k, x in v.items()}
    if isinstance(t, Object):
        types = {p.name: p.dtype for p in t.properties}
        return {k: to_json_value(types[k], x) for k, x in v.items()}
    return v


def to_cell(t: ColType | None, v: Any) -> Any:
    """What an in-process client puts in a nested cell: numpy scalars where the type says so."""
    if v is None:
        return None
    if t is DataType.integer:
        return np.int32(v)
    if t is DataType.float:
        return np.float32(v)
    if t is DataType.datetime:
        # Inside an Object or a Map MLflow refuses datetime.datetime and pd.Timestamp.
        return np.datetime64(v, "ns")
    if isinstance(t, Array):
        return [to_cell(t.dtype, x) for x in v]
    if isinstance(t, Map):
        return {k: to_cell(t.value_type, x) for k, x in v.items()}
    if isinstance(t, Object):
        types = {p.name: p.dtype for p in t.properties}
        return {k: to_cell(types[k], x) for k, x in v.items()}
    return v


_SERIES_DTYPES = {
    DataType.boolean: "bool",
    DataType.integer: "int32",
    DataType.long: "int64",
    DataType.float: "float32",
    DataType.double: "float64",
    DataType.datetime: "datetime64[ns]",
}


def to_series(t: ColType, column: list[Any]) -> pd.Series:
    if isinstance(t, DataType) and t in _SERIES_DTYPES:
        if t in (DataType.float, DataType.double):
            column = [np.nan if v is None else v for v in column]
        return pd.Series(column, dtype=_SERIES_DTYPES[t])
    return pd.Series([to_cell(t, v) for v in column], dtype=object)


class InProcessRequest:
    """What ``PyFuncModel.predict(data, params)`` gets; ``data()`` builds a fresh copy each time
    (MLflow may modify what it enforces)."""

    def __init__(
        self, form: str, build: Callable[[], Any], params: dict[str, Any] | None, shown: str
    ) -> None:
        self.form, self.build, self.params, self.shown = form, build, params, shown

    def data(self) -> Any:
        return self.build()

    def __repr__(self) -> str:
        return f"InProcessRequest({self.form}: {self.shown}, params={self.params!r})"


class JsonRequest:
    """A scoring-server body, as sent."""

    def __init__(self, form: str, body: str) -> None:
        self.form, self.body = form, body

    def __repr__(self) -> str:
        return f"JsonRequest({self.form}: {self.body})"


@dataclass(frozen=True)
class Rows:
    """Records for a column-based schema: per column (name or position), its type and values."""

    columns: list[tuple[str | int, ColType, list[Any]]]
    n: int


@st.composite
def column_rows(draw: Draw, schema: Schema) -> Rows:
    n = draw(weighted((3, 1), (2, 2), (1, 3)))
    cols: list[tuple[str | int, ColType, list[Any]]] = []
    for i, c in enumerate(schema.inputs):
        assert isinstance(c, ColSpec)
        if not c.required and draw(weighted((1, True), (2, False))):
            continue  # an optional column left out
        key: str | int = c.name if c.name is not None else i
        cols.append((key, c.type, [draw(values(c.type, not c.required)) for _ in range(n)]))
    if schema.has_input_names() and draw(weighted((1, True), (3, False))):
        cols = draw(st.permutations(cols))
    return Rows(cols, n)


@dataclass(frozen=True)
class Tensors:
    arrays: list[tuple[str | None, np.ndarray]]


@st.composite
def tensor_arrays(draw: Draw, schema: Schema) -> Tensors:
    rows = draw(st.integers(1, 3))
    arrays: list[tuple[str | None, np.ndarray]] = []
    for spec in schema.inputs:
        assert isinstance(spec, TensorSpec)
        shape = tuple(
            rows if i == 0 and d == -1 else d if d != -1 else draw(st.integers(1, 2))
            for i, d in enumerate(spec.shape)
        )
        dtype: np.dtype[Any] = spec.type
        if dtype == np.dtype("O"):
            elements: st.SearchStrategy[Any] = st.text(max_size=3)
        elif dtype == np.dtype("bool"):
            elements = st.booleans()
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            elements = st.one_of(st.integers(-3, 3), st.integers(int(info.min), int(info.max)))
        else:
            elements = st.floats(
                width=32 if dtype == np.dtype("float32") else 64,
                allow_nan=False,
                allow_infinity=False,
            )
        flat = draw(st.lists(elements, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        arr = np.empty(len(flat), dtype=dtype)
        arr[:] = flat
        arrays.append((spec.name, arr.reshape(shape)))
    return Tensors(arrays)


@st.composite
def request_params(draw: Draw, params: ParamSchema | None) -> dict[str, Any] | None:
    """Params valid under the contract: none sent, or some of its params set."""
    if params is None or draw(weighted((1, True), (2, False))):
        return None
    chosen = draw(st.lists(st.sampled_from([p.name for p in params.params]), unique=True))
    specs = {p.name: p for p in params.params}
    return {n: draw(param_values(_data_type(specs[n]), specs[n].shape)) for n in chosen}


def _data_type(spec: ParamSpec) -> DataType:
    assert isinstance(spec.dtype, DataType)  # the params drawn here are never Object-typed
    return spec.dtype


def _json_params(params: dict[str, Any] | None) -> dict[str, Any]:
    if params is None:
        return {}
    return {
        "params": {
            k: to_json_value(None, v)
            if not isinstance(v, list)
            else [to_json_value(None, x) for x in v]
            for k, v in params.items()
        }
    }


def _frame(rows: Rows) -> pd.DataFrame:
    return pd.DataFrame(
        {k: to_series(t, copy.deepcopy(vs)) for k, t, vs in rows.columns}, index=range(rows.n)
    )


def _columns(rows: Rows) -> dict[str | int, np.ndarray]:
    return {k: to_series(t, copy.deepcopy(vs)).to_numpy() for k, t, vs in rows.columns}


def _record(rows: Rows) -> dict[str | int, Any]:
    return {k: to_cell(t, copy.deepcopy(vs[0])) for k, t, vs in rows.columns}


@st.composite
def in_process_requests(draw: Draw, contract: SignatureDict) -> InProcessRequest:
    """A request a Python client typed exactly as the contract says sends to ``predict``."""
    sig = ModelSignature.from_dict(contract)
    params = draw(request_params(sig.params))
    if sig.inputs.is_tensor_spec():
        tensors: Tensors = draw(tensor_arrays(sig.inputs))
        if tensors.arrays[0][0] is None:
            only = tensors.arrays[0][1]
            return InProcessRequest("ndarray", only.copy, params, repr(only))
        mapping = dict(tensors.arrays)
        if len(mapping) == 1 and draw(st.booleans()):
            only = next(iter(mapping.values()))
            return InProcessRequest("ndarray", only.copy, params, repr(only))
        return InProcessRequest(
            "dict of ndarrays",
            lambda: {k: v.copy() for k, v in mapping.items()},
            params,
            repr(mapping),
        )
    rows: Rows = draw(column_rows(sig.inputs))
    forms = ["DataFrame"] * 4
    if sig.inputs.has_input_names():
        forms += ["dict of columns"] + (["dict, one record"] if rows.n == 1 else [])
    form = draw(st.sampled_from(forms))
    if form == "dict of columns":
        return InProcessRequest(form, lambda: _columns(rows), params, repr(_columns(rows)))
    if form == "dict, one record":
        return InProcessRequest(form, lambda: _record(rows), params, repr(_record(rows)))
    frame = _frame(rows)
    return InProcessRequest(
        form,
        lambda: _frame(rows),
        params,
        f"{frame.to_dict(orient='list')!r} dtypes {dict(frame.dtypes.astype(str))}",
    )


@st.composite
def json_requests(draw: Draw, contract: SignatureDict) -> JsonRequest:
    """A scoring-server body a JSON client written against the contract sends."""
    sig = ModelSignature.from_dict(contract)
    params = _json_params(draw(request_params(sig.params)))
    if sig.inputs.is_tensor_spec():
        tensors: Tensors = draw(tensor_arrays(sig.inputs))
        if tensors.arrays[0][0] is None:
            key = draw(st.sampled_from(["inputs", "instances"]))
            return JsonRequest(key, json.dumps({key: tensors.arrays[0][1].tolist(), **params}))
        columnar = {k: v.tolist() for k, v in tensors.arrays}
        form = draw(st.sampled_from(["inputs", "instances"]))
        firsts = {v.shape[0] for _, v in tensors.arrays}
        if form == "instances" and len(firsts) == 1:
            n = firsts.pop()
            instances = [
                {k: np.asarray(v[i]).tolist() for k, v in tensors.arrays} for i in range(n)
            ]
            return JsonRequest("instances", json.dumps({"instances": instances, **params}))
        return JsonRequest("inputs", json.dumps({"inputs": columnar, **params}))
    rows: Rows = draw(column_rows(sig.inputs))
    named = sig.inputs.has_input_names()
    cols = [(k, [to_json_value(t, v) for v in vs]) for k, t, vs in rows.columns]
    records = [[vs[i] for _, vs in cols] for i in range(rows.n)]
    forms = ["dataframe_split", "dataframe_records", "inputs", "instances"]
    if named:
        forms += ["inputs columns"] + (["inputs one record"] if rows.n == 1 else [])
    form = draw(st.sampled_from(forms))
    body: dict[str, Any]
    if form == "dataframe_split":
        split: dict[str, Any] = {"data": records}
        if named:
            split = {"columns": [k for k, _ in cols], **split}
        body = {"dataframe_split": split}
    elif form == "inputs columns":
        body = {"inputs": {k: vs for k, vs in cols}}
    elif form == "inputs one record":
        body = {"inputs": {k: vs[0] for k, vs in cols}}
    elif named:
        key = "dataframe_records" if form == "dataframe_records" else form
        body = {key: [{k: vs[i] for k, vs in cols} for i in range(rows.n)]}
    else:
        body = {form: records}
    return JsonRequest(form, json.dumps({**body, **params}))

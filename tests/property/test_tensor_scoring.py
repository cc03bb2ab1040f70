"""The scoring protocol's own tensor is MLflow's: whenever ``serving.tensor_inputs`` reads an
``inputs`` or ``instances`` body instead of MLflow's parser, it is the very array (dtype, shape,
values, and the name it is keyed by) that ``infer_and_parse_data`` makes, and ``predict`` then
hands the model the same thing after MLflow's schema enforcement (or refuses both alike).

Signatures of one tensor (numeric or boolean dtype, named or not, ranks 1-3, dimensions variable
or fixed) or several named ones, and bodies that fit them and bodies that do not: other ranks and
widths, ragged lists, numbers as strings, bools, nulls, huge ints, objects, empty lists, scalars,
the column form ``{name: list}`` under the right name and a wrong one, of equal lengths or not,
and rows as objects (``[{name: row, ...}, ...]``, TF-serving's form) with every name, one
missing, one extra, in another order, or a row that is not an object. The forms this module
reads are read whenever MLflow's parser takes them (else the fast path would silently be lost).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from hypothesis import event, given
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import _validate_prediction_input
from mlflow.pyfunc.scoring_server import infer_and_parse_data
from mlflow.types.schema import Schema, TensorSpec

from serving import tensor_inputs

DTYPES = ["float32", "float64", "int32", "int64", "uint8", "int8", "bool", "float16"]

odd_value = st.one_of(
    st.sampled_from(["1", "1.5", "x", "", "nan", True, False, None]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just({"a": 1}),
    st.just([]),
)
any_number = st.one_of(
    st.integers(-300, 300),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.booleans(),
)


def fitting(dtype: np.dtype[Any]) -> st.SearchStrategy[Any]:
    """JSON values numpy makes an element of ``dtype`` of (mostly exactly)."""
    if dtype.kind == "b":
        return st.booleans()
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.integers(int(info.min), int(info.max))
    return st.one_of(st.floats(width=min(64, 8 * dtype.itemsize)), st.integers(-1000, 1000))


@st.composite
def tensor_specs(draw: st.DrawFn, name: str | None) -> TensorSpec:
    rank = draw(st.integers(1, 3))
    shape = tuple(draw(st.sampled_from([-1, 1, 2, 3])) for _ in range(rank))
    if draw(st.booleans()):
        shape = (-1, *shape[1:])
    return TensorSpec(np.dtype(draw(st.sampled_from(DTYPES))), shape, name)


@st.composite
def signatures(draw: st.DrawFn) -> ModelSignature:
    """One tensor, named or not, or two or three named ones."""
    count = draw(st.sampled_from([1, 1, 2, 3]))
    names = [draw(st.sampled_from([None, "x"]))] if count == 1 else ["x", "y", "w"][:count]
    return ModelSignature(Schema([draw(tensor_specs(name)) for name in names]))


@st.composite
def tensors(draw: st.DrawFn, shape: tuple[int, ...], leaf: st.SearchStrategy[Any]) -> Any:
    """Nested lists of the given shape (-1: 1-3), sometimes ragged or with an odd value."""
    if not shape:
        odd = draw(st.integers(0, 29))
        return draw(odd_value if odd == 0 else any_number if odd == 1 else leaf)
    width = shape[0] if shape[0] != -1 else draw(st.integers(1, 3))
    if draw(st.integers(0, 19)) == 0:
        width = max(0, width + draw(st.sampled_from([-1, 1])))
    items = [draw(tensors(shape[1:], leaf)) for _ in range(width)]
    if items and draw(st.integers(0, 24)) == 0:
        items[0] = draw(odd_value)  # ragged, or an object where a row goes
    return items


def column(draw: st.DrawFn, spec: TensorSpec, rows: int | None) -> Any:
    """A value for one tensor: mostly of its shape (``rows`` of them, when told), its dtype."""
    shape = tuple(spec.shape)
    if rows is not None and shape[0] == -1:
        shape = (rows, *shape[1:])
    if draw(st.integers(0, 9)) == 0:  # another rank
        shape = shape[:-1] if len(shape) > 1 and draw(st.booleans()) else (*shape, 2)
    value: Any = draw(tensors(shape, fitting(spec.type)))
    if draw(st.integers(0, 29)) == 0:
        value = draw(st.one_of(any_number, st.just([]), st.just([{"x": [1.0]}])))
    return value


def as_objects(draw: st.DrawFn, value: dict[str, Any]) -> list[Any]:
    """``{name: rows}`` as a list of objects (one per row of the longest), now and then with a
    name missing, an extra one, another order, or a row that is not an object."""
    count = max((len(v) for v in value.values() if isinstance(v, list)), default=1)
    rows: list[Any] = []
    for i in range(max(1, count)):
        row = {k: v[i] if isinstance(v, list) and i < len(v) else v for k, v in value.items()}
        if draw(st.integers(0, 19)) == 0:
            row = dict(reversed(row.items()))
        rows.append(row)
    odd = draw(st.integers(0, 14))
    if odd == 0:
        rows[-1].pop(next(iter(rows[-1])))
    elif odd == 1:
        rows[-1]["z"] = 1
    elif odd == 2:
        rows.append([1.0])
    return rows


@st.composite
def bodies(draw: st.DrawFn, signature: ModelSignature) -> tuple[str, Any]:
    specs = signature.inputs.inputs
    field = draw(st.sampled_from(["inputs", "instances"]))
    if len(specs) > 1:
        rows = draw(st.integers(1, 3)) if draw(st.integers(0, 4)) else None
        value = {s.name: column(draw, s, rows) for s in specs}
        if draw(st.integers(0, 9)) == 0:
            value.pop("x")
        if draw(st.integers(0, 9)) == 0:
            value["z"] = [1]
        if draw(st.integers(0, 2)) == 0:
            return field, as_objects(draw, value)
        return field, value
    value = column(draw, specs[0], None)
    form = draw(st.integers(0, 9))
    if form == 0:
        value = {"x": value}
    elif form == 1:
        value = {draw(st.sampled_from(["y", "x"])): value, "z": [1]}
    elif form == 2:
        value = as_objects(draw, {draw(st.sampled_from(["x", "x", "y"])): value})
    return field, value


def read_here(field: str, value: Any, specs: dict[str | None, TensorSpec]) -> bool:
    """Whether the body is of a form this module reads (when numpy makes its arrays)."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return (
            field == "instances"
            and None not in specs
            and all(isinstance(row, dict) and row.keys() == specs.keys() for row in value)
        )
    if isinstance(value, dict):
        columns = value if None not in specs and value.keys() == specs.keys() else {}
    else:
        columns = {None: value} if len(specs) == 1 else {}
    return bool(columns) and all(
        isinstance(c, list) and c and not any(isinstance(i, dict) for i in c)
        for c in columns.values()
    )


def mlflows(field: str, value: Any, signature: ModelSignature) -> Any:
    """What MLflow's server parses, or None where it refuses the body."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return infer_and_parse_data({field: value}, signature.inputs)
    except (MlflowException, ValueError, TypeError, OverflowError):
        return None


def enforced(data: Any, signature: ModelSignature) -> Any:
    """What ``predict`` hands the model for ``data``, or the kind of error MLflow raises."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _validate_prediction_input(data, None, signature.inputs, None)[0]
    except Exception as exc:
        return type(exc).__name__


def assert_same(ours: Any, theirs: Any) -> None:
    assert type(ours) is type(theirs)
    if isinstance(theirs, dict):
        assert list(ours) == list(theirs)
        for key in theirs:
            assert_same(ours[key], theirs[key])
    elif isinstance(theirs, np.ndarray):
        assert ours.dtype == theirs.dtype
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs, strict=True)
    else:
        assert ours == theirs


@given(st.data())
def test_the_tensor_read_without_mlflows_parser_is_mlflows(data: st.DataObject) -> None:
    signature = data.draw(signatures())
    field, value = data.draw(bodies(signature))
    specs = tensor_inputs.specs(signature)
    assert specs is not None
    tensor = tensor_inputs.read(field, value, specs)
    event("read without MLflow's parser" if tensor is not None else "left to MLflow's parser")
    objects = isinstance(value, list) and value and isinstance(value[0], dict)
    event(f"{field} as {'objects' if objects else type(value).__name__}")
    theirs = mlflows(field, value, signature)
    if tensor is None:
        # A form read here that MLflow's parser takes is read here too.
        assert theirs is None or not read_here(field, value, specs), "left to MLflow's parser"
        return
    assert theirs is not None, "MLflow refuses a body read as valid"
    ours = tensor.model_input()
    assert_same(ours, theirs)
    seen, expected = enforced(ours, signature), enforced(theirs, signature)
    event(f"enforcement: {expected if isinstance(expected, str) else 'accepted'}")
    if isinstance(expected, str):
        assert seen == expected
    else:
        assert_same(seen, expected)
        # What is batched (a group) is only ever what the enforcement takes as it is.
        if tensor_inputs.group(tensor, specs, 64) is not None:
            assert all(tensor_inputs.conforms(a, specs[n]) for n, a in tensor.arrays.items())


def test_the_common_bodies_are_read_without_mlflows_parser() -> None:
    unnamed = {None: TensorSpec(np.dtype(np.float32), (-1, 3))}
    named = {"x": TensorSpec(np.dtype(np.float32), (-1, 3), "x")}
    several = {**named, "mask": TensorSpec(np.dtype(np.int64), (-1,), "mask")}
    rows = [[1.0, 2.0, 3.0], [4, 5, 6.5]]
    for field in ("inputs", "instances"):
        tensor = tensor_inputs.read(field, rows, unnamed)
        assert tensor is not None and isinstance(tensor.model_input(), np.ndarray)
        assert tensor.arrays[None].dtype == np.float32 and tensor.arrays[None].shape == (2, 3)
        for value in (rows, {"x": rows}):
            tensor = tensor_inputs.read(field, value, named)
            assert tensor is not None and list(tensor.model_input()) == ["x"]
        tensor = tensor_inputs.read(field, {"x": rows, "mask": [1, 0]}, several)
        assert tensor is not None and tensor.arrays["mask"].dtype == np.int64


def test_rows_as_objects_and_inputs_of_unequal_lengths_are_read_as_mlflows_parser_reads_them() -> (
    None
):
    """TF-serving's ``instances`` as a list of objects become one array per name, keyed in the
    first object's order; ``inputs`` by name of unequal lengths stay as they are. Both are
    MLflow's own outcome, and neither goes through its parser."""
    x = TensorSpec(np.dtype(np.float32), (-1, 3), "x")
    mask = TensorSpec(np.dtype(np.int64), (-1,), "mask")
    several = {"x": x, "mask": mask}
    signature = ModelSignature(Schema([x, mask]))
    objects = [{"mask": 1, "x": [1.0, 2.0, 3.0]}, {"x": [4, 5, 6.5], "mask": 0}]
    tensor = tensor_inputs.read("instances", objects, several)
    assert tensor is not None
    assert_same(tensor.model_input(), mlflows("instances", objects, signature))
    assert list(tensor.arrays) == ["mask", "x"] and tensor.arrays["x"].shape == (2, 3)
    alone = [{"x": [1.0, 2.0, 3.0]}]
    tensor = tensor_inputs.read("instances", alone, {"x": x})
    assert tensor is not None
    assert_same(tensor.model_input(), mlflows("instances", alone, ModelSignature(Schema([x]))))
    unequal = {"x": [[1.0, 2.0, 3.0]], "mask": [1, 0, 1]}
    tensor = tensor_inputs.read("inputs", unequal, several)
    assert tensor is not None and tensor_inputs.rows(tensor) == 3
    assert_same(tensor.model_input(), mlflows("inputs", unequal, signature))
    assert tensor_inputs.group(tensor, several, 64) is None  # never concatenated


def test_what_mlflows_parser_reads_otherwise_is_left_to_it() -> None:
    """An empty list is no records to MLflow (a list, not an array); strings, several tensors
    and values numpy refuses are its parser's to read or refuse."""
    spec = TensorSpec(np.dtype(np.float32), (-1, 3))
    assert mlflows("inputs", [], ModelSignature(Schema([spec]))) == []
    unnamed = {None: spec}
    assert tensor_inputs.read("inputs", [], unnamed) is None
    assert tensor_inputs.read("inputs", [[1.0], [1.0, 2.0]], unnamed) is None
    assert tensor_inputs.read("inputs", {"x": [[1.0, 2.0, 3.0]]}, unnamed) is None
    assert tensor_inputs.read("dataframe_records", [[1.0, 2.0, 3.0]], unnamed) is None
    a = TensorSpec(np.dtype(np.float32), (-1,), "a")
    b = TensorSpec(np.dtype(np.int64), (-1,), "b")
    assert tensor_inputs.read("inputs", [1.0, 2.0], {"a": a, "b": b}) is None
    assert tensor_inputs.read("inputs", {"a": [1.0]}, {"a": a, "b": b}) is None
    # Unequal lengths: MLflow's parser refuses them as ``instances``.
    assert mlflows("instances", {"a": [1.0], "b": [1, 2]}, ModelSignature(Schema([a, b]))) is None
    assert tensor_inputs.read("instances", {"a": [1.0], "b": [1, 2]}, {"a": a, "b": b}) is None
    # Objects: only as ``instances``, each with every name and no other, all of them objects.
    assert tensor_inputs.read("inputs", [{"a": 1.0, "b": 1}], {"a": a, "b": b}) is None
    assert tensor_inputs.read("instances", [{"a": 1.0}], {"a": a, "b": b}) is None
    assert tensor_inputs.read("instances", [{"a": 1.0, "b": 1, "c": 2}], {"a": a, "b": b}) is None
    assert tensor_inputs.read("instances", [{"a": 1.0, "b": 1}, [1.0, 1]], {"a": a, "b": b}) is None
    assert tensor_inputs.read("instances", [{}], {"a": a, "b": b}) is None
    assert tensor_inputs.read("instances", [{"a": [1.0]}], {None: spec}) is None
    strings = ModelSignature(Schema([TensorSpec(np.dtype(str), (-1,))]))
    assert tensor_inputs.specs(strings) is None
    assert tensor_inputs.specs(ModelSignature(Schema([a, b]))) == {"a": a, "b": b}

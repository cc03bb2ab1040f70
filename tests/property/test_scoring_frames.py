"""The scoring protocol's own frame is MLflow's: whenever ``serving.mlflow_frames`` reads a body
instead of MLflow's parser, the model gets the same input from ``predict`` (after MLflow's
schema enforcement) as from MLflow's parse; for ``dataframe_records`` and ``dataframe_split`` the
frame is also the very DataFrame ``infer_and_parse_data`` makes (columns, dtypes, values,
index). A merged call's frame is the concatenation of each request's own.

Signatures of plain named columns (some optional) and records of values that fit them and values
that do not (numbers as strings, bools as numbers, out-of-range ints, nulls, missing and extra
columns), sent as ``dataframe_records``, ``dataframe_split``, ``instances`` and ``inputs``.
"""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd
from hypothesis import event, given
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import _validate_prediction_input
from mlflow.pyfunc.scoring_server import infer_and_parse_data
from mlflow.types.schema import ColSpec, DataType, Schema

from serving import mlflow_frames
from serving.batch_inputs import model_input, work_for

PLAIN = [
    DataType.string,
    DataType.boolean,
    DataType.integer,
    DataType.long,
    DataType.float,
    DataType.double,
]
NAMES = ["a", "b", "c", "d"]

any_value = st.one_of(
    st.text(max_size=4),
    st.booleans(),
    st.integers(min_value=-(2**31) - 2, max_value=2**31 + 2),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 2**24 + 1, 2**63 - 1, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(width=32),
    st.sampled_from(["1", "1.5", "true", "", "nan"]),
    st.none(),
)


def fitting(t: DataType) -> st.SearchStrategy[Any]:
    return {
        DataType.string: st.text(max_size=6),
        DataType.boolean: st.booleans(),
        DataType.integer: st.integers(min_value=-(2**31), max_value=2**31 - 1),
        DataType.long: st.integers(min_value=-(2**63), max_value=2**63 - 1),
        DataType.float: st.one_of(st.floats(), st.integers(-(2**53), 2**53)),
        DataType.double: st.one_of(st.floats(), st.integers(-(2**53), 2**53)),
    }[t]


@st.composite
def signatures(draw: st.DrawFn) -> ModelSignature:
    size = draw(st.integers(1, len(NAMES)))
    columns = [
        ColSpec(draw(st.sampled_from(PLAIN)), name, required=draw(st.booleans()))
        for name in NAMES[:size]
    ]
    return ModelSignature(Schema(columns))


@st.composite
def bodies(draw: st.DrawFn, signature: ModelSignature) -> tuple[str, Any]:
    """A ``dataframe_records`` or ``dataframe_split`` value, mostly fitting, sometimes not."""
    columns = {c.name: c.type for c in signature.inputs.inputs}
    sent = draw(st.lists(st.sampled_from([*columns, "zz"]), min_size=1, unique=True))
    n = draw(st.integers(1, 4))
    rows = []
    for _ in range(n):
        row = {}
        for name in sent:
            bad = name not in columns or draw(st.integers(0, 9)) == 0
            row[name] = draw(any_value if bad else fitting(columns[name]))
        if draw(st.integers(0, 19)) == 0:  # a record that lacks a column the others have
            row.pop(sent[0])
        rows.append(row)
    field = draw(st.sampled_from(["dataframe_records", "dataframe_split", "instances", "inputs"]))
    if field in ("dataframe_records", "instances"):
        return field, rows
    names = list(rows[0])
    if field == "inputs":
        return field, {k: [r.get(k) for r in rows] for k in names}
    return field, {"columns": names, "data": [[r.get(k) for k in names] for r in rows]}


def mlflows(field: str, value: Any, signature: ModelSignature) -> Any:
    """What MLflow's server parses, or None where it refuses the body."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = infer_and_parse_data({field: value}, signature.inputs)
    except (MlflowException, ValueError, TypeError, OverflowError):
        return None
    return parsed


def enforced(data: Any, signature: ModelSignature) -> Any:
    """What ``predict`` hands the model for ``data``, or the kind of error MLflow raises."""
    if isinstance(data, pd.DataFrame):
        data = data.copy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _validate_prediction_input(data, None, signature.inputs, None)[0]
    except Exception as exc:
        return type(exc).__name__


@given(st.data())
def test_the_frame_made_without_mlflows_parser_is_mlflows(data: st.DataObject) -> None:
    signature = data.draw(signatures())
    field, value = data.draw(bodies(signature))
    columns = mlflow_frames.plain_columns(signature)
    assert columns is not None
    rows = mlflow_frames.records(field, value, columns)
    event("read without MLflow's parser" if rows is not None else "left to MLflow's parser")
    if rows is None:
        return
    theirs = mlflows(field, value, signature)
    assert theirs is not None, "MLflow refuses a body read as valid"
    ours = mlflow_frames.frame(rows, columns)
    if field.startswith("dataframe_"):
        # Frames from MLflow's frame parser: the very same frame.
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    seen, expected = enforced(ours, signature), enforced(theirs, signature)
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(seen, expected, check_exact=True)
    else:
        assert seen == expected


@given(st.data())
def test_a_merged_calls_frame_is_each_requests_frame_one_after_the_other(
    data: st.DataObject,
) -> None:
    signature = data.draw(signatures())
    columns = mlflow_frames.plain_columns(signature)
    assert columns is not None
    parts = []
    for _ in range(data.draw(st.integers(2, 4))):
        field, value = data.draw(bodies(signature))
        rows = mlflow_frames.records(field, value, columns)
        if rows is not None:
            parts.append(rows)
    works = [work_for(p, signature, 64) for p in parts]
    groups = {w.group for w in works}
    event(f"{len(parts)} bodies read, {len(groups)} group(s)")
    for group in groups:
        merged = [w.part for w in works if w.group == group]
        if group is None or len(merged) < 2:
            continue
        alone = [mlflow_frames.frame(p, columns) for p in merged]
        expected = pd.concat(alone, ignore_index=True)
        pd.testing.assert_frame_equal(model_input(merged, signature), expected, check_exact=True)


def test_the_common_bodies_are_read_without_mlflows_parser() -> None:
    signature = ModelSignature(Schema([ColSpec("string", "prompt"), ColSpec("double", "x")]))
    columns = mlflow_frames.plain_columns(signature)
    assert columns is not None
    records = [{"prompt": "a", "x": 1.5}, {"prompt": "b", "x": 2}]
    split = {"columns": ["prompt", "x"], "data": [["a", 1.5], ["b", 2]]}
    inputs = {"prompt": ["a", "b"], "x": [1.5, 2]}
    for field, value in (
        ("dataframe_records", records),
        ("dataframe_split", split),
        ("instances", records),
        ("inputs", inputs),
    ):
        rows = mlflow_frames.records(field, value, columns)
        assert rows == records, field


def test_strings_mlflow_would_change_are_left_to_its_parser() -> None:
    """``instances`` and ``inputs`` pass through numpy's fixed-width strings, which drop a
    trailing NUL: MLflow hands the model "a" for "a\\x00" there (and "a\\x00" from a frame)."""
    signature = ModelSignature(Schema([ColSpec("string", "prompt")]))
    columns = mlflow_frames.plain_columns(signature)
    assert columns is not None
    for field, value in (("instances", [{"prompt": "a\x00"}]), ("inputs", {"prompt": ["a\x00"]})):
        assert enforced(mlflows(field, value, signature), signature)["prompt"].tolist() == ["a"]
        assert mlflow_frames.records(field, value, columns) is None, field
    kept = mlflow_frames.records("dataframe_records", [{"prompt": "a\x00"}], columns)
    assert kept == [{"prompt": "a\x00"}]

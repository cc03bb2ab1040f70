"""The DataFrame MLflow's scoring server makes of JSON records, made without its parser.

``mlflow models serve`` reads ``dataframe_records`` and ``dataframe_split`` with pandas'
constructor and then casts each column to the signature's type
(``mlflow.utils.proto_json_utils.cast_df_types_according_to_schema``): several times the CPU of
the rest of a small request. For the bodies where the outcome is plain, this module makes the
same frame directly: every column of the signature a named scalar of a plain type (string,
boolean, integer, long, float, double), every record with the same columns, all of them the
signature's, and every value of the JSON type that the column's dtype holds exactly (a string in a
string column; a bool in a boolean one; an int within int32 in an integer column, within int64
in a long one; an int within 2**53 or a float in a float or double column). Nulls, extra or
missing-in-some-records columns, numbers sent as strings, an ``index``, other types: ``None``,
and MLflow's own parser reads the body, with every quirk it has. The frame made here equals
MLflow's, columns, dtypes (pandas' ``str`` for strings), values and index: the property test
``tests/property/test_scoring_frames.py`` compares the two on generated signatures and records,
and what ``predict`` then receives after MLflow's schema enforcement.

``MlflowRecords`` marks records read this way, so that requests of MLflow's protocol share a
predict call only with each other (``serving.batch_inputs``): the frame differs from the one
``/serve`` builds for the same records (``object`` string columns).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, DataType

# The dtype MLflow's cast gives each plain column type, and what a JSON value must be to land in
# it exactly.
_INT32 = 2**31
_INT64 = 2**63
_EXACT_IN_DOUBLE = 2**53


def _string(value: Any) -> bool:
    return isinstance(value, str)


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _int32(value: Any) -> bool:
    return type(value) is int and -_INT32 <= value < _INT32


def _int64(value: Any) -> bool:
    return type(value) is int and -_INT64 <= value < _INT64


def _real(value: Any) -> bool:
    if type(value) is int:
        return True
    return type(value) is float


_PLAIN = {
    DataType.string: (_string, "str"),
    DataType.boolean: (_boolean, "bool"),
    DataType.integer: (_int32, "int32"),
    DataType.long: (_int64, "int64"),
    DataType.float: (_real, "float32"),
    DataType.double: (_real, "float64"),
}


class MlflowRecords(list[dict[str, Any]]):
    """Records of a body MLflow's parser would read, to be made into its frame (``frame``)."""


def plain_columns(signature: ModelSignature | None) -> dict[str, DataType] | None:
    """The signature's named input columns by name, when every one is of a plain type."""
    schema = signature.inputs if signature is not None else None
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    columns: dict[str, DataType] = {}
    for column in cast(list[ColSpec], schema.inputs):
        if not isinstance(column.type, DataType) or column.type not in _PLAIN:
            return None
        columns[str(column.name)] = column.type
    return columns


def records(field: str, value: Any, columns: Mapping[str, DataType]) -> MlflowRecords | None:
    """``value`` of the body's ``field`` as records whose frame (``frame``) is what the model
    gets from MLflow's server for it, or None when MLflow's parser must read it."""
    if field in ("dataframe_records", "instances"):
        if not isinstance(value, list) or not value or not isinstance(value[0], dict):
            return None
        names, rows = list(value[0]), value
    elif field == "dataframe_split":
        if not isinstance(value, dict) or set(value) != {"columns", "data"}:
            return None
        names, data = value["columns"], value["data"]
        if not isinstance(names, list) or not isinstance(data, list) or not data:
            return None
        if len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
            return None
        width = len(names)
        if not all(isinstance(row, list) and len(row) == width for row in data):
            return None
        rows = [dict(zip(names, row, strict=True)) for row in data]
    elif field == "inputs":
        # Columns of values: MLflow makes arrays of them, its enforcement a frame.
        if not isinstance(value, dict) or not value:
            return None
        names, lists = list(value), list(value.values())
        if not all(isinstance(v, list) for v in lists) or len({len(v) for v in lists}) != 1:
            return None
        rows = [dict(zip(names, values, strict=True)) for values in zip(*lists, strict=True)]
        if not rows:
            return None
    else:
        return None
    if not names or not set(names) <= columns.keys():
        return None
    checks = [(name, _PLAIN[columns[name]][0]) for name in names]
    if field in ("instances", "inputs"):
        # Through numpy's fixed-width strings, which drop trailing NULs.
        checks = [(n, _numpy_string if f is _string else f) for n, f in checks]
    keys = set(names)
    for row in rows:
        if not isinstance(row, dict) or len(row) != len(keys) or row.keys() != keys:
            return None
        for name, fits in checks:
            if not fits(row[name]):
                return None
    return MlflowRecords(rows)


def _numpy_string(value: Any) -> bool:
    return isinstance(value, str) and not value.endswith("\x00")


def frame(rows: list[dict[str, Any]], columns: Mapping[str, DataType]) -> pd.DataFrame:
    """The DataFrame MLflow's scoring server parses ``rows`` (from ``records``) into."""
    data = {
        name: pd.Series([row[name] for row in rows], dtype=_PLAIN[columns[name]][1])
        for name in rows[0]
    }
    return pd.DataFrame(data)

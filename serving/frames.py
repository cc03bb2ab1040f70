"""Between JSON records and what a pyfunc model reads and writes.

Inputs: validated records become a DataFrame whose column dtypes follow the signature of the
version that will run, not the contract's: MLflow's schema enforcement refuses a column it
cannot convert safely (an int64 column where the version says ``integer``), and the two
signatures may differ in ways the controller judged compatible (int -> long). Columns the
version does not read are dropped; a column nobody sent stays absent, so MLflow, not us,
decides whether that version needs it.

Outputs: whatever ``predict`` returned (DataFrame, Series, ndarray, list of dicts or scalars,
dict) becomes a list of JSON-ready records shaped by the output schema; a model with a single
named output column gets its bare values wrapped as ``{name: value}``.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, cast

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, DataType, Schema, TensorSpec

from serving.exceptions import InvalidInput

# Dtypes MLflow accepts for each column type; the nullable ones are used when a value is missing.
_DTYPES: dict[DataType, tuple[str, str]] = {
    DataType.integer: ("int32", "Int32"),
    DataType.long: ("int64", "Int64"),
    DataType.float: ("float32", "float32"),
    DataType.double: ("float64", "float64"),
    DataType.boolean: ("bool", "boolean"),
}


def to_model_input(records: list[Any], signature: ModelSignature | None) -> Any:
    """The object to hand to ``predict`` for ``records`` under the version's ``signature``."""
    schema = signature.inputs if signature is not None else None
    if schema is None:
        return pd.DataFrame.from_records(records) if _all_dicts(records) else pd.DataFrame(records)
    if schema.is_tensor_spec():
        return _tensor_input(records[0], schema)
    columns: list[ColSpec] = schema.inputs
    if not schema.has_input_names():
        rows = [r if isinstance(r, list | tuple) else [r] for r in records]
        frame = pd.DataFrame(rows, columns=range(len(columns)))
        return pd.DataFrame({i: _column(frame[i].tolist(), c) for i, c in enumerate(columns)})
    data = {
        c.name: _column([r.get(c.name) for r in records], c)
        for c in columns
        if any(c.name in r for r in records)
    }
    return pd.DataFrame(data, index=range(len(records)))


def _column(values: list[Any], column: ColSpec) -> pd.Series:
    dtype = column.type
    missing = any(v is None for v in values)
    if isinstance(dtype, DataType) and dtype in _DTYPES:
        plain, nullable = _DTYPES[dtype]
        return pd.Series(values, dtype=nullable if missing else plain)
    if dtype == DataType.datetime:
        return pd.Series(pd.to_datetime(values), dtype="datetime64[ns]")
    # Strings, bytes, arrays, objects, maps: MLflow wants Python objects in an object column.
    return pd.Series(values, dtype=object)


def _tensor_input(inputs: Any, schema: Schema) -> Any:
    try:
        return _tensor_arrays(inputs, schema)
    except (ValueError, TypeError) as exc:
        # Ragged lists, objects where numbers go: what numpy cannot make an array of.
        reason = f"cannot be read as the model's tensor: {exc}"[:300]
        raise InvalidInput(
            f"inputs {reason}", errors=[{"field": "inputs", "reason": reason}]
        ) from None


def _tensor_arrays(inputs: Any, schema: Schema) -> Any:
    specs = cast(list[TensorSpec], schema.inputs)
    if isinstance(inputs, Mapping):
        by_name = {s.name: s for s in specs}
        return {
            k: np.asarray(v, dtype=by_name[k].type if k in by_name else None)
            for k, v in inputs.items()
        }
    return np.asarray(inputs, dtype=specs[0].type)


def _all_dicts(records: list[Any]) -> bool:
    return all(isinstance(r, Mapping) for r in records)


def to_records(prediction: Any, outputs: Schema | None) -> list[Any]:
    """The prediction as a list of JSON-ready records, one per input row where possible."""
    names = _output_names(outputs)
    if isinstance(prediction, pd.DataFrame):
        rows: list[Any] = _frame_rows(prediction)
    elif isinstance(prediction, pd.Series | np.ndarray):
        rows = _wrap(prediction.tolist(), names)
    elif isinstance(prediction, Mapping):
        rows = _columnar(prediction)
    elif isinstance(prediction, list | tuple):
        rows = _wrap(list(prediction), names)
    else:
        rows = _wrap([prediction], names)
    return [jsonable(r) for r in rows]


def undeclared_columns(prediction: Any, outputs: Schema | None) -> list[str]:
    """Columns of a DataFrame ``prediction`` that its named ``outputs`` do not declare.

    Only a DataFrame is read: its columns are output columns by construction, whereas a list of
    dicts may be the values of one object column (``_wrap``). Why an undeclared column is a
    failure: docs/architecture.md, "Answers within the declared outputs".
    """
    names = _output_names(outputs)
    if not names or not isinstance(prediction, pd.DataFrame):
        return []
    declared = set(names)
    return [str(c) for c in prediction.columns if str(c) not in declared]


def _frame_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    # Column by column: ``to_dict(orient="records")`` costs ~10% of a small request's CPU.
    if not frame.columns.is_unique:
        return cast(list[dict[str, Any]], frame.to_dict(orient="records"))
    names = [str(c) for c in frame.columns]
    columns = [frame[c].tolist() for c in frame.columns]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def _output_names(outputs: Schema | None) -> list[str]:
    if outputs is None or outputs.is_tensor_spec() or not outputs.has_input_names():
        return []
    return [str(n) for n in outputs.input_names()]


def _wrap(values: list[Any], names: list[str]) -> list[Any]:
    if len(names) == 1:
        return [v if isinstance(v, Mapping) else {names[0]: v} for v in values]
    if len(names) > 1:
        # A 2-D array with one value per named column: zip each row with the names.
        return [
            dict(zip(names, v, strict=True)) if isinstance(v, list) and len(v) == len(names) else v
            for v in values
        ]
    return values


def _columnar(prediction: Mapping[str, Any]) -> list[Any]:
    """A dict of equal-length columns becomes rows; any other dict is one record."""
    values = list(prediction.values())
    lengths = {len(v) for v in values if isinstance(v, list | tuple | np.ndarray | pd.Series)}
    if (
        values
        and len(lengths) == 1
        and all(isinstance(v, list | tuple | np.ndarray | pd.Series) for v in values)
    ):
        n = lengths.pop()
        columns = {k: list(v) for k, v in prediction.items()}
        return [{k: columns[k][i] for k in columns} for i in range(n)]
    return [dict(prediction)]


def jsonable(value: Any) -> Any:
    """``value`` with numpy, pandas, bytes and NaN turned into plain JSON values."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray | pd.Series):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime | date | pd.Timestamp):
        return None if pd.isna(value) else value.isoformat()
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)

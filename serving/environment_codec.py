"""What crosses the boundary to an environment of a version's own, and back; no Ray in here.

A version served from an environment of its own runs in another process with other packages
(``serving.environments``), so its inputs and answers cross a process boundary. They cross as
data, never as pickled Python objects: a pickled pandas object would be unpickled by another
pandas than the one that made it (an isolated environment may have another major), and
unpickling is running code. Each value becomes a small tree of JSON values and bytes:

- a pandas ``DataFrame`` is an Arrow IPC stream (``pyarrow``, its dtypes and index kept in
  Arrow's pandas metadata), a ``Series`` a one-column one with its name;
- a numpy array of a fixed-size dtype is its raw bytes with dtype and shape; an array of
  objects (strings, mixed) its ``tolist()`` as JSON;
- dicts, lists and tuples (tuples come back as lists) hold encoded values;
- ``None``, booleans, numbers and strings are themselves; numpy scalars their Python value.

Anything else is refused with the type named (``TypeError``), before it is sent.
"""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped]

# A tree of these: what Ray's own serializer carries without pickling Python objects.
Encoded = dict[str, Any]


def encode(value: Any) -> Encoded:
    """``value`` as JSON values and bytes (see the module's docstring)."""
    if value is None or isinstance(value, bool | int | float | str):
        return {"json": value}
    if isinstance(value, np.generic):
        return {"json": value.item()}
    if isinstance(value, pd.DataFrame):
        return {"frame": _arrow(value)}
    if isinstance(value, pd.Series):
        name = value.name
        return {"series": _arrow(value.to_frame(name="series")), "name": encode(name)}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            return {"objects": encode(value.tolist()), "shape": list(value.shape)}
        array = np.ascontiguousarray(value)
        return {"ndarray": array.tobytes(), "dtype": array.dtype.str, "shape": list(array.shape)}
    if isinstance(value, dict):
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return {"list": [encode(item) for item in value]}
    if isinstance(value, datetime.datetime | datetime.date):
        date_only = not isinstance(value, datetime.datetime)
        return {"datetime": value.isoformat(), "date_only": date_only}
    if isinstance(value, bytes):
        return {"bytes": value}
    raise TypeError(
        f"a {type(value).__module__}.{type(value).__qualname__} cannot be sent to an "
        "environment of its own (data frames, arrays, dicts, lists and JSON values can)"
    )


def decode(value: Encoded) -> Any:
    """The value ``encode`` was given (tuples as lists)."""
    if "json" in value:
        return value["json"]
    if "frame" in value:
        return _frame(value["frame"])
    if "series" in value:
        return _frame(value["series"])["series"].rename(decode(value["name"]))
    if "ndarray" in value:
        array = np.frombuffer(value["ndarray"], dtype=np.dtype(value["dtype"]))
        return array.reshape(value["shape"]).copy()  # writable, as the model's own would be
    if "objects" in value:
        items = decode(value["objects"])
        array = np.empty(len(items), dtype=object)
        array[:] = items
        if len(value["shape"]) == 1:
            return array
        return np.array(items, dtype=object).reshape(value["shape"])
    if "dict" in value:
        return {decode(k): decode(v) for k, v in value["dict"]}
    if "list" in value:
        return [decode(item) for item in value["list"]]
    if "datetime" in value:
        parsed = datetime.datetime.fromisoformat(value["datetime"])
        return parsed.date() if value["date_only"] else parsed
    if "bytes" in value:
        return bytes(value["bytes"])
    raise ValueError(f"not an encoded value: keys {sorted(value)}")


def _arrow(frame: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(frame)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _frame(data: bytes) -> pd.DataFrame:
    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        frame: pd.DataFrame = reader.read_all().to_pandas()
    return frame

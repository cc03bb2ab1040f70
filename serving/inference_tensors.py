"""Open Inference Protocol tensors to and from /serve's records, under a model's contract.

V2 datatypes and MLflow types (the one table of the mapping):

    V2 datatype        numpy      MLflow column type      MLflow tensor dtype
    BOOL               bool       boolean                 bool
    INT8, INT16        int8/16    -                       int8, int16
    INT32              int32      integer                 int32
    INT64              int64      long                    int64
    UINT8..UINT64      uint*      -                       uint8..uint64
    FP16               float16    -                       float16
    FP32               float32    float                   float32
    FP64               float64    double                  float64
    BYTES              object     string, binary,         str, bytes, object
                                  datetime (ISO 8601)

- A column signature is one tensor per column, shape ``[-1]`` (``[-1, -1]`` for an array
  column), the column's name as the tensor's; row ``i`` of every tensor makes record ``i``.
  Columns of objects or maps have no V2 datatype: their metadata says ``BYTES`` and their data
  is the JSON values, as /serve takes them. An unnamed column is named by its position.
- A tensor signature is its tensors, with their shapes; an unnamed one is ``input-0``.
- Outputs: one tensor per output column (or per key of the records a model answers), else one
  tensor (named by the signature, else ``output-0``), shaped as the prediction is.
- ``parameters`` of the request are the MLflow params (Triton's own ``binary_data_output``,
  ``sequence_*``, ``priority`` and ``timeout`` aside); ``outputs`` selects and orders outputs;
  ``id`` is echoed.
- The binary tensor extension: an ``Inference-Header-Content-Length`` header splits the body
  into its JSON and the raw tensors (little-endian, row-major; BYTES as 4-byte lengths and
  bytes), and outputs asked for as binary (``binary_data_output``, or an output's
  ``binary_data``) are answered the same way. What tritonclient sends unless told otherwise.
- gRPC's messages become the same ``InferRequest`` and leave ``select_outputs`` the same way
  (``serving.grpc_tensors``); only the encoding differs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from fastapi.responses import Response
from mlflow.types.schema import Array, ColSpec, DataType, Schema, TensorSpec

from serving.bodies import parse_json
from serving.contract import Contract
from serving.exceptions import InvalidInput

HEADER_LENGTH = "inference-header-content-length"
BINARY = "application/octet-stream"
# Triton's request parameters, which are not the model's.
RESERVED = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}
)
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_NUMPY = {dtype: name for name, dtype in DTYPES.items() if name != "BYTES"}
_COLUMNS = {
    DataType.boolean: "BOOL",
    DataType.integer: "INT32",
    DataType.long: "INT64",
    DataType.float: "FP32",
    DataType.double: "FP64",
}


def datatype_of(dtype: Any) -> str:
    """The V2 datatype of an MLflow column type or a numpy dtype (BYTES for anything else)."""
    if isinstance(dtype, DataType):
        return _COLUMNS.get(dtype, "BYTES")
    if isinstance(dtype, Array):
        return datatype_of(dtype.dtype)
    if isinstance(dtype, np.dtype):
        return _BY_NUMPY.get(dtype, "BYTES")
    return "BYTES"


# Metadata


def tensors_of(schema: Schema | None, stem: str) -> list[dict[str, Any]]:
    """The tensors a schema (inputs or outputs) reads or writes, as V2 metadata lists them."""
    if schema is None:
        return []
    if schema.is_tensor_spec():
        specs = cast(list[TensorSpec], schema.inputs)
        return [
            {"name": s.name or f"{stem}-{i}", "datatype": datatype_of(s.type),
             "shape": list(s.shape)}
            for i, s in enumerate(specs)
        ]  # fmt: skip
    return [
        {"name": _column_name(c, i), "datatype": datatype_of(c.type),
         "shape": [-1, -1] if isinstance(c.type, Array) else [-1]}
        for i, c in enumerate(cast(list[ColSpec], schema.inputs))
    ]  # fmt: skip


def _column_name(column: ColSpec, position: int) -> str:
    return column.name if column.name is not None else str(position)


def metadata(name: str, versions: list[str], contract: Contract) -> dict[str, Any]:
    signature = contract.signature
    return {
        "name": name,
        "versions": versions,
        "platform": "mlflow",
        "inputs": tensors_of(signature.inputs if signature else None, "input"),
        "outputs": tensors_of(signature.outputs if signature else None, "output"),
    }


# Requests


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    array: np.ndarray[Any, Any]


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    params: dict[str, Any] | None
    # Requested outputs in order (None: all), and which of them are answered as binary.
    outputs: list[str] | None
    binary: dict[str, bool]
    binary_default: bool


def parse_request(raw: bytes, header_length: str | None) -> InferRequest:
    """A V2 inference request, JSON or with the binary tensor extension."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(raw):
            raise invalid("inference-header-content-length", "is not the length of the JSON")
        split = int(header_length)
        body, rest = parse_json(raw[:split]), memoryview(raw)[split:]
    else:
        body, rest = parse_json(raw), memoryview(b"")
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise invalid("inputs", "must be a list of tensors")
    tensors, offset = [], 0
    for i, spec in enumerate(body["inputs"]):
        tensor, used = _tensor(spec, f"inputs[{i}]", rest[offset:])
        tensors.append(tensor)
        offset += used
    if offset != len(rest):
        raise invalid("body", f"has {len(rest) - offset} bytes no input claims")
    parameters = _parameters(body, "")
    params = {k: v for k, v in parameters.items() if k not in RESERVED}
    outputs, binary = _requested(body.get("outputs"))
    request_id = body.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        inputs=tensors,
        params=params or None,
        outputs=outputs,
        binary=binary,
        binary_default=parameters.get("binary_data_output") is True,
    )


def _tensor(spec: Any, field: str, binary: memoryview) -> tuple[Tensor, int]:
    """One input tensor, and how many bytes of the binary part it took."""
    if not isinstance(spec, dict):
        raise invalid(field, "must be a JSON object with name, datatype, shape and data")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str) or not name:
        raise invalid(f"{field}.name", "must be a non-empty string")
    if datatype not in DTYPES:
        raise invalid(f"{field}.datatype", f"must be one of {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise invalid(f"{field}.shape", "must be a list of non-negative integers")
    size = _parameters(spec, field).get("binary_data_size")
    try:
        if size is not None:
            if not isinstance(size, int) or not 0 <= size <= len(binary):
                raise invalid(f"{field}.parameters.binary_data_size", "overruns the body")
            flat = from_bytes(bytes(binary[:size]), datatype)
            used = size
        elif "data" in spec:
            flat = np.asarray(spec["data"], dtype=DTYPES[datatype]).reshape(-1)
            used = 0
        else:
            raise invalid(f"{field}.data", "is required (or parameters.binary_data_size)")
        array = flat.reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:
        reason = f"does not hold a {datatype} tensor of shape {shape}: {exc}"[:300]
        raise invalid(f"{field}.data", reason) from None
    return Tensor(name, datatype, array), used


def from_bytes(raw: bytes, datatype: str) -> np.ndarray[Any, Any]:
    if datatype != "BYTES":
        return np.frombuffer(raw, dtype=DTYPES[datatype].newbyteorder("<"))
    items: list[Any] = []
    offset = 0
    while offset < len(raw):
        (length,) = np.frombuffer(raw, dtype="<u4", count=1, offset=offset)
        item = raw[offset + 4 : offset + 4 + int(length)]
        if len(item) != length:
            raise ValueError("a BYTES element runs past its tensor")
        items.append(text_of(item))
        offset += 4 + int(length)
    return np.array(items, dtype=object)


def text_of(item: bytes) -> str | bytes:
    # A string column reads text; bytes that are not UTF-8 can only be binary.
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        return item


def _parameters(holder: dict[str, Any], field: str) -> dict[str, Any]:
    """The ``parameters`` object of a request, an input or an output ({} if absent)."""
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise invalid(f"{field}.parameters" if field else "parameters", "must be a JSON object")
    return parameters


def _requested(outputs: Any) -> tuple[list[str] | None, dict[str, bool]]:
    if outputs is None:
        return None, {}
    if not isinstance(outputs, list):
        raise invalid("outputs", "must be a list of {name, parameters}")
    names, binary = [], {}
    for i, output in enumerate(outputs):
        name = output.get("name") if isinstance(output, dict) else None
        if not isinstance(name, str):
            raise invalid(f"outputs[{i}].name", "must be a string")
        names.append(name)
        flag = _parameters(output, f"outputs[{i}]").get("binary_data")
        if isinstance(flag, bool):
            binary[name] = flag
    return names, binary


def serve_body(request: InferRequest, contract: Contract) -> dict[str, Any]:
    """The /serve envelope (``serving.contract``) for ``request``'s tensors under ``contract``."""
    body: dict[str, Any] = {"inputs": _inputs(request.inputs, contract)}
    if request.params is not None:
        body["params"] = request.params
    return body


def _inputs(tensors: list[Tensor], contract: Contract) -> Any:
    signature = contract.signature
    if not tensors:
        raise invalid("inputs", "must hold at least one tensor")
    if contract.kind == "tensor" and signature is not None:
        specs = cast(list[TensorSpec], signature.inputs.inputs)
        if len(specs) == 1 and len(tensors) == 1:
            expected = specs[0].name
            if expected is not None and tensors[0].name != expected:
                raise invalid("inputs[0].name", f"must be {expected!r}")
            return _values(tensors[0].array)
        return {t.name: _values(t.array) for t in tensors}
    count = _rows(tensors[0], 0)
    for i, tensor in enumerate(tensors[1:], start=1):
        if _rows(tensor, i) != count:
            reason = f"{tensor.name!r} has {len(tensor.array)} rows, {tensors[0].name!r} {count}"
            raise invalid(f"inputs[{i}].shape", f"must have one row per record: {reason}")
    if contract.kind == "unnamed" and signature is not None:
        by_position = {_column_name(c, i): i for i, c in enumerate(signature.inputs.inputs)}
        unknown = [t.name for t in tensors if t.name not in by_position]
        if unknown:
            raise invalid("inputs", f"{unknown[0]!r} is not an input of this model")
        ordered = sorted(tensors, key=lambda t: by_position[t.name])
        columns = [_values(t.array) for t in ordered]
        if len(columns) == 1:
            return columns[0]
        return [list(row) for row in zip(*columns, strict=True)]
    columns_by_name = {t.name: _values(t.array) for t in tensors}
    return [{name: column[i] for name, column in columns_by_name.items()} for i in range(count)]


def _rows(tensor: Tensor, position: int) -> int:
    if tensor.array.ndim == 0:
        raise invalid(f"inputs[{position}].shape", "must have one row per record")
    return len(tensor.array)


def _values(array: np.ndarray[Any, Any]) -> Any:
    return array.tolist()


# Answers


def infer_answer(
    request: InferRequest, records: list[Any], contract: Contract, name: str, version: str
) -> Response:
    """The V2 answer for /serve's output ``records``: JSON, or JSON and raw tensors."""
    outputs = select_outputs(request, records, contract)
    answer: dict[str, Any] = {"model_name": name, "model_version": version}
    if request.id is not None:
        answer["id"] = request.id
    tensors, chunks = [], []
    for output_name, (datatype, shape, values) in outputs.items():
        tensor: dict[str, Any] = {"name": output_name, "datatype": datatype, "shape": shape}
        if request.binary.get(output_name, request.binary_default):
            raw = to_bytes(values, datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = values
        tensors.append(tensor)
    answer["outputs"] = tensors
    head = json.dumps(answer, separators=(",", ":")).encode()
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(
        b"".join([head, *chunks]), media_type=BINARY, headers={HEADER_LENGTH: str(len(head))}
    )


Output = tuple[str, list[int], list[Any]]  # datatype, shape, data (flat, row-major)


def select_outputs(
    request: InferRequest, records: list[Any], contract: Contract
) -> dict[str, Output]:
    """The output tensors of /serve's ``records``, those the request asked for, in its order."""
    outputs = _outputs(records, contract)
    if request.outputs is None:
        return outputs
    missing = [n for n in request.outputs if n not in outputs]
    if missing:
        raise invalid("outputs", f"{missing[0]!r} is not an output of this model")
    return {n: outputs[n] for n in request.outputs}


def _outputs(records: list[Any], contract: Contract) -> dict[str, Output]:
    schema = contract.signature.outputs if contract.signature is not None else None
    if records and all(isinstance(r, Mapping) for r in records):
        types: dict[str, Any] = {}
        if schema is not None and not schema.is_tensor_spec() and schema.has_input_names():
            types = {str(c.name): c.type for c in cast(list[ColSpec], schema.inputs)}
        names = list(types)
        names += [k for r in records for k in r if k not in names]
        return {n: _output([r.get(n) for r in records], types.get(n)) for n in names}
    dtype: Any = None
    name = "output-0"
    if schema is not None and schema.is_tensor_spec() and len(schema.inputs) == 1:
        spec = cast(TensorSpec, schema.inputs[0])
        dtype, name = spec.type, spec.name or name
    return {name: _output(records, dtype)}


def _output(values: list[Any], declared: Any) -> Output:
    try:
        array = np.asarray(values)
    except ValueError:  # ragged: each value is sent as its JSON text
        return "BYTES", [len(values)], [json.dumps(v) for v in values]
    datatype = datatype_of(declared) if declared is not None else datatype_of(array.dtype)
    if array.dtype.kind in "OU" and datatype != "BYTES" and None not in values:
        datatype = "BYTES"  # what the model answered is not what the signature says
    return datatype, list(array.shape), array.reshape(-1).tolist()


def to_bytes(values: list[Any], datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.asarray(values, dtype=DTYPES[datatype].newbyteorder("<")).tobytes()
    parts = []
    for value in values:
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts += [len(raw).to_bytes(4, "little"), raw]
    return b"".join(parts)


def invalid(field: str, reason: str) -> InvalidInput:
    return InvalidInput(f"{field} {reason}", errors=[{"field": field, "reason": reason}])

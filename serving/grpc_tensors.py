"""The Open Inference Protocol's gRPC messages to and from ``serving.inference_tensors``' tensors.

A ``ModelInferRequest`` becomes the same ``InferRequest`` a REST request becomes, so its
``serve_body``, the contract's validation and ``select_outputs`` are REST's; only the encoding
of the tensors differs:

- ``raw_input_contents`` (what tritonclient's gRPC client sends): one entry per input, in the
  inputs' order, little-endian and row-major, BYTES as 4-byte lengths and bytes (REST's binary
  tensor extension's layout, read by the same ``from_bytes``). A request sends every input raw
  or none.
- ``contents`` (typed): the field of the tensor's datatype (INT8/16/32 in ``int_contents``,
  UINT8/16/32 in ``uint_contents``...); FP16 has none, so it comes raw.
- The answer is raw (``raw_output_contents``) when the request was, or when an output is FP16;
  typed otherwise, so each client reads what it sent.
- ``parameters`` are the MLflow params (Triton's own aside, as for REST); ``outputs`` select
  and order; ``id`` is echoed.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from serving.contract import Contract
from serving.grpc_protocol.grpc_predict_v2_pb2 import (
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
)
from serving.inference_tensors import (
    DTYPES,
    RESERVED,
    InferRequest,
    Tensor,
    from_bytes,
    invalid,
    select_outputs,
    text_of,
    to_bytes,
)

# The typed field of each datatype (the protocol's table); FP16 has none.
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def infer_request(message: ModelInferRequest) -> InferRequest:
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        reason = f"has {len(raw)} entries for {len(message.inputs)} inputs (one per input)"
        raise invalid("raw_input_contents", reason)
    tensors = [
        _tensor(spec, f"inputs[{i}]", raw[i] if raw else None)
        for i, spec in enumerate(message.inputs)
    ]
    params = {k: parameter(v) for k, v in message.parameters.items() if k not in RESERVED}
    outputs = [o.name for o in message.outputs]
    return InferRequest(
        id=message.id or None,
        inputs=tensors,
        params=params or None,
        outputs=outputs or None,
        binary={},
        binary_default=False,
    )


def _tensor(spec: ModelInferRequest.InferInputTensor, field: str, raw: bytes | None) -> Tensor:
    if not spec.name:
        raise invalid(f"{field}.name", "must be a non-empty string")
    datatype = spec.datatype
    if datatype not in DTYPES:
        raise invalid(f"{field}.datatype", f"must be one of {', '.join(DTYPES)}")
    shape = list(spec.shape)
    if any(d < 0 for d in shape):
        raise invalid(f"{field}.shape", "must be a list of non-negative integers")
    try:
        if raw is not None:
            flat = from_bytes(raw, datatype)
        elif datatype not in CONTENTS:
            raise invalid(f"{field}.contents", f"has no field for {datatype}: send it raw")
        elif datatype == "BYTES":
            flat = np.array([text_of(b) for b in spec.contents.bytes_contents], dtype=object)
        else:
            values = getattr(spec.contents, CONTENTS[datatype])
            flat = np.asarray(list(values), dtype=DTYPES[datatype])
        array = flat.reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:
        reason = f"does not hold a {datatype} tensor of shape {shape}: {exc}"[:300]
        where = f"raw_input_contents[{field[7:-1]}]" if raw is not None else f"{field}.contents"
        raise invalid(where, reason) from None
    return Tensor(spec.name, datatype, array)


def parameter(value: InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice is not None else None


def infer_response(
    request: InferRequest,
    records: list[Any],
    contract: Contract,
    name: str,
    version: str,
    *,
    raw: bool,
) -> ModelInferResponse:
    """The answer for /serve's output ``records``, raw or typed (the module's docstring)."""
    outputs = select_outputs(request, records, contract)
    raw = raw or any(datatype == "FP16" for datatype, _, _ in outputs.values())
    response = ModelInferResponse(model_name=name, model_version=version, id=request.id or "")
    for output_name, (datatype, shape, values) in outputs.items():
        datatype, encoded = _encoded(datatype, values, raw)
        tensor = response.outputs.add(name=output_name, datatype=datatype, shape=shape)
        if isinstance(encoded, bytes):
            response.raw_output_contents.append(encoded)
        else:
            tensor.contents.CopyFrom(encoded)
    return response


def _encoded(
    datatype: str, values: list[Any], raw: bool
) -> tuple[str, bytes | InferTensorContents]:
    """An output's datatype and encoding. Values that do not fit their datatype (a missing
    integer, 1.7 in INT8, 2 in BOOL) are sent as BYTES, each value's JSON text, as REST sends a
    ragged output: never truncated or coerced."""
    try:
        return datatype, _encode(datatype, values, raw)
    except (TypeError, ValueError, OverflowError):
        return "BYTES", _encode("BYTES", [json.dumps(v) for v in values], raw)


def _encode(datatype: str, values: list[Any], raw: bool) -> bytes | InferTensorContents:
    typed = None if datatype == "BYTES" else _typed(datatype, values)
    if raw:
        return to_bytes(values, datatype)
    contents = InferTensorContents()
    if typed is None:
        contents.bytes_contents.extend(
            v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values
        )
    else:
        getattr(contents, CONTENTS[datatype]).extend(typed.tolist())
    return contents


def _typed(datatype: str, values: list[Any]) -> np.ndarray[Any, Any]:
    """``values`` in ``datatype``; ValueError if an integer or BOOL one changes: numpy's cast
    truncates 1.7 to an INT8 1, turns 2 into a BOOL true and wraps -1.0 into a UINT8 255, where
    REST's JSON answers 1.7, 2 and -1.0 as they are."""
    dtype = DTYPES[datatype]
    with np.errstate(all="ignore"):  # a float out of an integer's range: refused below
        typed = np.asarray(values, dtype=dtype)
    if dtype.kind in "biu" and typed.tolist() != values:
        raise ValueError(f"values a {datatype} tensor does not hold as they are")
    return typed

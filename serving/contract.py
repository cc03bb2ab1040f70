"""A model's HTTP contract, built from an MLflow signature.

A registered model's contract is the API its clients were promised, as the routing table carries
it; a pin keeps it, so it need not be the default version's signature (what sets and changes it:
docs/architecture.md, "The contract"). From it this module builds pydantic v2 models (built once
per model name and signature, then cached):

- column-based, named inputs: a *record* model, one field per column, typed from the column
  (string -> str, integer -> int within int32, long -> int within int64, float/double -> float,
  boolean -> bool, binary -> base64 text, datetime -> ISO 8601; arrays, objects and maps nest).
  Optional columns (``required=False``) may be left out. Unknown fields are refused, so a
  client that sends ``text_to_translate`` to a model that reads ``prompt`` hears about it.
- column-based, unnamed inputs: a record is a bare value (one column) or a list of values
  (one per column, in order).
- tensor-based inputs: a record is any JSON array or object; numpy checks it later against the
  tensor's dtype.
- no signature (only when the policy lets such a version be the default): a record is any JSON
  object, handed to the model as a DataFrame row.
- params: a ``params`` object whose fields default to the signature's defaults.

Request bodies (``POST /models/{name}/serve``) take one of three shapes:

    {"prompt": "hello"}                                  one record
    [{"prompt": "hello"}, {"prompt": "bye"}]             a list of records
    {"inputs": <record or list>, "params": {"k": 3}}     an envelope, the only way to send params

An object is read as an envelope when it has an ``inputs`` key and the contract has no input
column named ``inputs``; tensor-based contracts always take the envelope (or a bare array).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Literal, cast

from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Map, Object, ParamSchema, Schema
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from serving.exceptions import ContractError, InvalidInput

Kind = Literal["columns", "unnamed", "tensor", "free"]

_CONFIG = ConfigDict(extra="forbid", val_json_bytes="base64", ser_json_bytes="base64")
# A 422 lists this many errors at most and validation stops once it has found them: a body
# wrong in every field of every record would otherwise get an answer many times its size.
MAX_LISTED_ERRORS = 50
_INT32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
_INT64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
_SCALARS: dict[DataType, Any] = {
    DataType.string: str,
    DataType.integer: _INT32,
    DataType.long: _INT64,
    DataType.float: float,
    DataType.double: float,
    DataType.boolean: bool,
    DataType.binary: bytes,
    DataType.datetime: datetime,
}


@dataclass(frozen=True)
class Request:
    """A validated body: records in the contract's shape, and the params the client set."""

    records: list[Any]
    params: dict[str, Any] | None


@dataclass(frozen=True)
class Contract:
    name: str
    signature: ModelSignature | None
    kind: Kind
    record: Any  # a type hint: the record model, a scalar type, a tuple, dict[str, Any]...
    output: Any
    params: type[BaseModel] | None
    input_names: frozenset[str] = frozenset()

    def parse(self, body: Any) -> Request:
        """Validate a decoded JSON body; raise InvalidInput naming each bad field."""
        if isinstance(body, dict) and "inputs" in body and self._takes_envelope():
            unknown = sorted(set(body) - {"inputs", "params"})
            if unknown:
                raise _invalid([(k, "is not allowed beside 'inputs', 'params'") for k in unknown])
            inputs, params = body["inputs"], self._params(body.get("params"))
            if self.kind != "tensor" and isinstance(inputs, list):
                return Request(self._many(inputs, prefix="inputs"), params)
            return Request([self._one(inputs, prefix="inputs")], params)
        if isinstance(body, list) and self.kind != "tensor":
            return Request(self._many(body, prefix=""), None)
        return Request([self._one(body, prefix="")], None)

    def _takes_envelope(self) -> bool:
        return "inputs" not in self.input_names

    def _one(self, value: Any, *, prefix: str) -> Any:
        return _dump(_validate(_adapter(self.record), value, prefix))

    def _many(self, values: list[Any], *, prefix: str) -> list[Any]:
        """Record by record, so a body wrong everywhere stops costing once enough is said."""
        if not values:
            raise _invalid([(prefix or "body", "must hold at least one record")])
        adapter, records, found = _adapter(self.record), [], _Found()
        for i, value in enumerate(values):
            try:
                records.append(_dump(adapter.validate_python(value)))
            except ValidationError as exc:
                found.add(f"{prefix}[{i}]", exc)
                if found.full and i + 1 < len(values):
                    unchecked = f"{len(values) - i - 1:,} records after {prefix}[{i}]"
                    raise found.invalid(unchecked) from None
        if found.count:
            raise found.invalid()
        return records

    def _params(self, value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        if self.params is None:
            raise _invalid([("params", "this model takes no params")])
        model = _validate(_adapter(self.params), value, "params")
        # Only what the client set: the version's own defaults apply to the rest.
        return cast(BaseModel, model).model_dump(by_alias=True, exclude_unset=True)


def contract_for(name: str, signature: dict[str, str | None] | None) -> Contract:
    """The contract for ``name`` under ``signature`` (MLflow's ``to_dict`` form), cached."""
    return _build(name, json.dumps(signature, sort_keys=True))


def parse_signature(signature: dict[str, str | None] | None) -> ModelSignature | None:
    if signature is None:
        return None
    try:
        return cast(ModelSignature, ModelSignature.from_dict(signature))
    except Exception as exc:
        raise ContractError(f"unreadable signature: {exc}") from exc


@lru_cache(maxsize=512)
def _build(name: str, signature_json: str) -> Contract:
    signature = parse_signature(json.loads(signature_json))
    stem = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if signature is None:
        return Contract(name, None, "free", dict[str, Any], Any, None)
    kind, record = _record_type(signature.inputs, f"{stem}_Record")
    _, output = _record_type(signature.outputs, f"{stem}_Output")
    params = _params_model(signature.params, stem)
    names = frozenset(signature.inputs.input_names()) if kind == "columns" else frozenset()
    return Contract(name, signature, kind, record, output, params, names)


def _record_type(schema: Schema | None, title: str) -> tuple[Kind, Any]:
    if schema is None:
        return "free", Any
    if schema.is_tensor_spec():
        return "tensor", list[Any] | dict[str, Any]
    columns = cast(list[ColSpec], schema.inputs)
    if not schema.has_input_names():
        types = [
            _optional(_python_type(c.type, f"{title}_{i}"), c.required)
            for i, c in enumerate(columns)
        ]
        return "unnamed", types[0] if len(types) == 1 else tuple.__class_getitem__(tuple(types))
    fields: dict[str, Any] = {}
    for i, column in enumerate(columns):
        hint = _optional(_python_type(column.type, f"{title}_{column.name}"), column.required)
        default = ... if column.required else None
        # Field names are positional: a column may be called "schema" or "model_config".
        fields[f"c{i}"] = (hint, Field(default, alias=column.name))
    return "columns", create_model(title, __config__=_CONFIG, **fields)


def _params_model(schema: ParamSchema | None, stem: str) -> type[BaseModel] | None:
    if schema is None or not schema.params:
        return None
    fields: dict[str, Any] = {}
    for i, spec in enumerate(schema.params):
        hint = _python_type(spec.dtype, f"{stem}_Param_{spec.name}")
        if spec.shape is not None:
            hint = list_of(hint)
        # null is only a value for a param whose own default is null.
        fields[f"p{i}"] = (
            _optional(hint, spec.default is not None),
            Field(spec.default, alias=spec.name),
        )
    return create_model(f"{stem}_Params", __config__=_CONFIG, **fields)


def _python_type(dtype: Any, title: str) -> Any:
    if isinstance(dtype, DataType):
        return _SCALARS[dtype]
    if isinstance(dtype, Array):
        return list_of(_python_type(dtype.dtype, title))
    if isinstance(dtype, Map):
        return dict.__class_getitem__((str, _python_type(dtype.value_type, title)))
    if isinstance(dtype, Object):
        fields: dict[str, Any] = {
            f"c{i}": (
                _optional(_python_type(p.dtype, f"{title}_{p.name}"), p.required),
                Field(... if p.required else None, alias=p.name),
            )
            for i, p in enumerate(dtype.properties)
        }
        return create_model(title, __config__=_CONFIG, **fields)
    return Any  # AnyType, or a type newer than this code: let MLflow judge it


def list_of(hint: Any) -> Any:
    """``list[hint]`` for a hint only known at run time."""
    return list.__class_getitem__(hint)


def _optional(hint: Any, required: bool) -> Any:
    return hint if required else hint | None


@lru_cache(maxsize=2048)
def _adapter(hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(hint)


def _validate(adapter: TypeAdapter[Any], value: Any, prefix: str) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        found = _Found()
        found.add(prefix, exc)
        raise found.invalid() from None


def _dump(value: Any) -> Any:
    # Left-out optional columns stay out: "absent" and "null" differ to some models.
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_unset=True)
    return value


def _field(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" not in str(part):  # pydantic's union-branch tags, not fields
            path += f".{part}" if path else str(part)
    return path or "body"


def _reason(kind: str, message: str) -> str:
    if kind == "extra_forbidden":
        return "is not an input of this model"
    if kind == "missing":
        return "is required"
    return message


class _Found:
    """Validation errors found so far: all counted, the first ``MAX_LISTED_ERRORS`` listed."""

    def __init__(self) -> None:
        self.listed: list[tuple[str, str]] = []
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count >= MAX_LISTED_ERRORS

    def add(self, prefix: str, exc: ValidationError) -> None:
        self.count += exc.error_count()
        room = MAX_LISTED_ERRORS - len(self.listed)
        if room > 0:
            # Inputs, URLs and contexts left out: only the location and message are answered.
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            self.listed += [(_field(prefix, e["loc"]), _reason(e["type"], e["msg"]))
                            for e in errors[:room]]  # fmt: skip

    def invalid(self, unchecked: str = "") -> InvalidInput:
        return _invalid(self.listed, count=self.count, unchecked=unchecked)


def _invalid(
    errors: list[tuple[str, str]], *, count: int | None = None, unchecked: str = ""
) -> InvalidInput:
    """The 422: the errors listed (at most ``MAX_LISTED_ERRORS``), how many more were found,
    and which records were ``unchecked`` when validation stopped at the cap."""
    listed = [{"field": f, "reason": r} for f, r in errors[:MAX_LISTED_ERRORS]]
    summary = "; ".join(f"{f}: {r}" for f, r in errors[:3])
    notes = []
    if (more := (len(errors) if count is None else count) - 3) > 0:
        notes.append(f"and {more:,} more")
    if unchecked:
        notes.append(f"{unchecked} were not checked")
    return InvalidInput(summary + (f" ({'; '.join(notes)})" if notes else ""), errors=listed)

"""The backward rules for one input or output schema (columns or tensors) against the contract's.

Inputs are written by clients and read by the version; outputs are written by the version and
read by clients. So for inputs the contract's types are *sent* and the version's *read*, and
for outputs the other way round; the same type rules (``types.unreadable``) serve both.

Inputs:
- a version input that the contract lacks must be optional (clients do not send it);
- every contract input must still be read: MLflow ignores extra columns of a DataFrame, but
  refuses a one-record JSON request (``{"inputs": {"a": 1, "b": "x"}}``) carrying a key its
  schema lacks, so even a removed optional input breaks the clients that send it;
- an input optional in the contract must stay optional;
- named vs unnamed (positional) columns, and columns vs tensors: breaking;
- tensors: MLflow checks dtype exactly (even ``int32 -> int64`` is refused in-process) and
  refuses a DataFrame for a relaxed shape, so dtype and shape must be equal.

How MLflow reads a JSON object (or a dict) depends on the whole schema, not one column, so some
changes that are safe column by column still break (all found by the property test):
- with an ``Array`` or ``Object`` column anywhere in the inputs, a dict is read as *one record*;
  without one, as *columns*. A version that gains the first such column, or loses the last one,
  reads ``{"inputs": {"a": [1, 2]}}`` differently from the contract (refused, or 1 record for 2);
- a scalar column retyped to ``any`` stops being converted to an array, so a list of strings
  becomes one value of one record;
- unnamed columns sent as JSON rows (``[[1, 2]]``) are parsed with the *first* column's type for
  every value, so a new type for ``#0`` must be one every other column can read.

Outputs:
- every contract output must still be written, with a type its readers can read, and a
  required one must stay required; new outputs are fine (clients ignore what they don't know);
- a contract without outputs promises nothing; a version without outputs cannot be checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mlflow.types.schema import AnyType, Array, DataType, Object, Schema, TensorSpec

from controller.compatibility.types import describe, unreadable, why_scalar_unreadable
from controller.compatibility.verdict import Break

Side = Literal["input", "output"]


@dataclass(frozen=True)
class Field:
    key: str  # the name, or "#i" for a positional field
    type: Any  # an MLflow type, or the TensorSpec itself
    required: bool

    @property
    def label(self) -> str:
        return self.key if self.key.startswith("#") else f"'{self.key}'"

    def describe(self) -> str:
        return f"{_describe(self.type)}, {'required' if self.required else 'optional'}"


def _describe(t: Any) -> str:
    if isinstance(t, TensorSpec):
        return f"tensor {t.type} {tuple(t.shape)}"
    return describe(t)


def _kind(schema: Schema) -> str:
    base = "tensors" if schema.is_tensor_spec() else "columns"
    return f"named {base}" if schema.has_input_names() else f"unnamed {base}"


def fields(schema: Schema) -> dict[str, Field]:
    named = schema.has_input_names()
    out: dict[str, Field] = {}
    for i, spec in enumerate(schema.inputs):
        key = str(spec.name) if named else f"#{i}"
        t = spec if isinstance(spec, TensorSpec) else spec.type
        out[key] = Field(key, t, bool(getattr(spec, "required", True)))
    return out


def compare(side: Side, contract: Schema | None, version: Schema | None) -> list[Break]:
    if contract is None:
        return []  # the contract says nothing: no client relies on anything
    if version is None:
        declares = "inputs" if side == "input" else "outputs"
        return [
            Break(
                side,
                None,
                f"this version declares no {declares}, so it cannot be checked against the "
                f"contract's {_listing(contract)}; log it with a signature that has them",
            )
        ]
    if _kind(contract) != _kind(version):
        return [
            Break(
                side,
                None,
                f"the contract's {side}s are {_kind(contract)}, this version's are "
                f"{_kind(version)}; MLflow reads the two kinds differently, so clients break",
            )
        ]
    ours, theirs = fields(contract), fields(version)
    if side == "output":
        return _outputs(ours, theirs)
    breaks = _inputs(ours, theirs)
    if not contract.is_tensor_spec():
        breaks += _record_reading(ours, theirs)
        if not contract.has_input_names():
            breaks += _row_parsing(ours, theirs)
    return breaks


def _listing(schema: Schema) -> str:
    names = ", ".join(f.label for f in fields(schema).values())
    return f"{_kind(schema)} ({names})"


def _inputs(ours: dict[str, Field], theirs: dict[str, Field]) -> list[Break]:
    breaks: list[Break] = []
    added = [f for k, f in theirs.items() if k not in ours]
    for key, c in ours.items():
        v = theirs.get(key)
        if v is None:
            instead = f"; this version reads {', '.join(f.label for f in added)}" if added else ""
            breaks.append(
                Break("input", key, f"input {c.label} ({c.describe()}) is missing{instead}")
            )
            continue
        if v.required and not c.required:
            breaks.append(
                Break(
                    "input",
                    key,
                    f"input {c.label} is optional in the contract but required by this version; "
                    "clients that leave it out would be refused",
                )
            )
        breaks += _typed("input", c, v)
    for v in added:
        if v.required:
            breaks.append(
                Break(
                    "input",
                    v.key,
                    f"input {v.label} ({v.describe()}) is new and required in this version; "
                    "clients written against the contract do not send it (make it optional)",
                )
            )
    return breaks


def _nested(f: Field) -> bool:
    return isinstance(f.type, Array | Object)


def _record_reading(ours: dict[str, Field], theirs: dict[str, Field]) -> list[Break]:
    """A version that gains its first Array/Object input, or loses the last: see the docstring."""
    if any(map(_nested, ours.values())) == any(map(_nested, theirs.values())):
        return []
    if any(map(_nested, theirs.values())):
        causes, what = [f for f in theirs.values() if _nested(f)], "this version"
    else:
        causes, what = [f for f in ours.values() if _nested(f)], "the contract"
    after = (
        "reads a JSON object as one record, where the contract's clients send columns"
        if what == "this version"
        else "reads a JSON object as columns, where the contract's clients send one record"
    )
    return [
        Break(
            "input",
            f.key,
            f"input {f.label} is {describe(f.type)} in {what} only; with an array or object "
            f"input MLflow reads a JSON object as one record, without one as columns, so this "
            f"version {after}",
        )
        for f in causes
    ]


def _row_parsing(ours: dict[str, Field], theirs: dict[str, Field]) -> list[Break]:
    """Unnamed columns sent as rows are parsed with column #0's type: see the docstring."""
    first_c, first_v = ours.get("#0"), theirs.get("#0")
    if first_c is None or first_v is None or first_c.type == first_v.type or len(theirs) < 2:
        return []
    unread = [f for k, f in theirs.items() if k != "#0" and unreadable(first_v.type, f.type)]
    if not unread:
        return []
    return [
        Break(
            "input",
            "#0",
            f"input #0 is {describe(first_v.type)} in this version, {describe(first_c.type)} in "
            f"the contract; MLflow parses JSON rows with column #0's type, and "
            f"{', '.join(f'#{f.key[1:]} ({describe(f.type)})' for f in unread)} cannot read "
            f"{describe(first_v.type)}",
        )
    ]


def _outputs(ours: dict[str, Field], theirs: dict[str, Field]) -> list[Break]:
    breaks: list[Break] = []
    for key, c in ours.items():
        v = theirs.get(key)
        if v is None:
            breaks.append(
                Break(
                    "output",
                    key,
                    f"output {c.label} ({c.describe()}) is missing in this version; "
                    "clients read it",
                )
            )
            continue
        if c.required and not v.required:
            breaks.append(
                Break(
                    "output",
                    key,
                    f"output {c.label} is required in the contract but optional in this version; "
                    "clients expect it in every answer",
                )
            )
        breaks += _typed("output", c, v)
    return breaks


def _typed(side: Side, c: Field, v: Field) -> list[Break]:
    """The break, if any, between the contract's and the version's type of one field."""
    if isinstance(c.type, TensorSpec) or isinstance(v.type, TensorSpec):
        return _tensor(side, c, v)
    if side == "input":
        sent, read = c.type, v.type
        head = f"input {c.label}: the contract sends {describe(sent)}, this version reads "
        head += describe(read)
        problems = unreadable(sent, read)
        if isinstance(sent, DataType) and isinstance(read, AnyType):
            return [
                Break(
                    side,
                    c.key,
                    f"{head}; MLflow stops converting an input read as any, so a client's "
                    "column of values may arrive as one list in one record",
                )
            ]
    else:
        sent, read = v.type, c.type
        head = f"output {c.label}: this version writes {describe(sent)}, the contract promises "
        head += describe(read)
        problems = unreadable(sent, read, extras_ok=True)
    if not problems:
        return []
    if isinstance(sent, DataType) and isinstance(read, DataType):
        return [Break(side, c.key, f"{head}, {why_scalar_unreadable(sent, read)}")]
    return [Break(side, c.key, f"{head}: {'; '.join(problems)}")]


def _tensor(side: Side, c: Field, v: Field) -> list[Break]:
    if not (isinstance(c.type, TensorSpec) and isinstance(v.type, TensorSpec)):
        return [
            Break(
                side,
                c.key,
                f"{side} {c.label} is {c.describe()} in the contract but "
                f"{v.describe()} in this version",
            )
        ]
    problems: list[str] = []
    if c.type.type != v.type.type:
        problems.append(
            f"its dtype is {c.type.type} in the contract and {v.type.type} in this version, "
            "and MLflow checks tensor dtypes exactly"
        )
    if tuple(c.type.shape) != tuple(v.type.shape):
        problems.append(
            f"its shape is {tuple(c.type.shape)} in the contract and {tuple(v.type.shape)} in "
            "this version, and MLflow refuses DataFrames for a changed shape"
        )
    if not problems:
        return []
    return [Break(side, c.key, f"{side} tensor {c.label}: {'; '.join(problems)}")]

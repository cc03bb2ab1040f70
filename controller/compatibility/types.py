"""Whether a value of one MLflow column type can be read as another, and how to say why not.

The rules are MLflow's own enforcement (``mlflow.models.utils._enforce_mlflow_datatype``,
``_enforce_array``, ``_enforce_object``, ``_enforce_map``) restricted to what changes no value:

- ``integer -> long``, ``integer -> double`` and ``float -> double`` are safe widenings;
  MLflow refuses ``long -> double`` and ``long -> float`` (except when every value happens to
  be 0 or 1, which no client can promise), ``integer -> float`` and every narrowing.
- ``string -> binary`` and ``binary -> string`` pass the in-process check but not the JSON
  path: MLflow's scoring server base64-decodes binary columns, so text arrives altered, and
  bytes leave as base64 text. Both break clients.
- ``Array``, ``Map``: their element / value types by the same rules.
- ``Object``: every property the sender may send must exist on the reader's side (MLflow
  refuses unknown properties, even where the sender marks them optional); a property the
  reader requires must be one the sender always sends. For outputs the sender is the version
  and the reader a client, and JSON clients ignore properties they do not know, so there
  ``extras_ok`` lets the version add properties.
- ``AnyType``: reads anything; sent, it can be read only as ``AnyType``.
"""

from __future__ import annotations

from typing import Any

from mlflow.types.schema import AnyType, Array, DataType, Map, Object

# (sent, read) pairs MLflow converts without changing a value.
SAFE_WIDENINGS: frozenset[tuple[DataType, DataType]] = frozenset(
    {
        (DataType.integer, DataType.long),
        (DataType.integer, DataType.double),
        (DataType.float, DataType.double),
    }
)


def describe(t: Any) -> str:
    """A type as a person reads it: ``long``, ``array<long>``, ``object{a: long, b?: string}``."""
    if isinstance(t, DataType):
        return t.name
    if isinstance(t, Array):
        return f"array<{describe(t.dtype)}>"
    if isinstance(t, Map):
        return f"map<string, {describe(t.value_type)}>"
    if isinstance(t, Object):
        inner = ", ".join(
            f"{p.name}{'' if p.required else '?'}: {describe(p.dtype)}" for p in t.properties
        )
        return f"object{{{inner}}}"
    if isinstance(t, AnyType):
        return "any"
    return str(t)


def why_scalar_unreadable(sent: DataType, read: DataType) -> str:
    if (sent, read) in {(DataType.string, DataType.binary), (DataType.binary, DataType.string)}:
        return "which MLflow's JSON path converts with base64, altering the values"
    if sent in (DataType.long, DataType.double) and read in (DataType.double, DataType.float):
        return "which MLflow refuses (it would lose precision)"
    return "which MLflow refuses"


def unreadable(sent: Any, read: Any, *, extras_ok: bool = False, at: str = "") -> list[str]:
    """Why a value of type ``sent`` cannot be read as ``read``; empty when it can.

    Each item is a clause naming the nested place (``at``, like ``.address.zip`` or ``[]``)
    where the types part; the caller puts the field's name and direction around it.
    """
    where = f" at '{at}'" if at else ""
    if isinstance(read, AnyType):
        return []
    if isinstance(sent, DataType) and isinstance(read, DataType):
        if sent == read or (sent, read) in SAFE_WIDENINGS:
            return []
        return [f"{sent.name} is read as {read.name}{where}, {why_scalar_unreadable(sent, read)}"]
    if isinstance(sent, Array) and isinstance(read, Array):
        return unreadable(sent.dtype, read.dtype, extras_ok=extras_ok, at=f"{at}[]")
    if isinstance(sent, Map) and isinstance(read, Map):
        return unreadable(sent.value_type, read.value_type, extras_ok=extras_ok, at=f"{at}{{}}")
    if isinstance(sent, Object) and isinstance(read, Object):
        return _object_unreadable(sent, read, extras_ok=extras_ok, at=at)
    return [f"{describe(sent)} is read as {describe(read)}{where}, which MLflow refuses"]


def _object_unreadable(sent: Object, read: Object, *, extras_ok: bool, at: str) -> list[str]:
    problems: list[str] = []
    theirs = {p.name: p for p in read.properties}
    ours = {p.name: p for p in sent.properties}
    for name, prop in ours.items():
        other = theirs.get(name)
        path = f"{at}.{name}"
        if other is None:
            if not extras_ok:
                problems.append(
                    f"property '{path}' is sent but not declared by the reader, "
                    "which MLflow refuses"
                )
            continue
        if other.required and not prop.required:
            problems.append(f"property '{path}' is required by the reader but may be left out")
        problems += unreadable(prop.dtype, other.dtype, extras_ok=extras_ok, at=path)
    for name, other in theirs.items():
        if name not in ours and other.required:
            problems.append(f"property '{at}.{name}' is required by the reader but never sent")
    return problems

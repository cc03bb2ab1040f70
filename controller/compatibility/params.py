"""The backward rules for params (``ParamSchema``), from ``_enforce_params_schema``.

Clients set params by name; MLflow validates each against the version's ``ParamSpec`` and fills
the ones left out with the version's defaults.

- a new param is fine with a default; without one (``default: null``) the model gets ``None``
  where every client written against the contract sends nothing: breaking;
- a param the version no longer declares is dropped by MLflow with a warning: a client's
  setting is silently ignored, so it is recorded as a warning, not a break;
- a changed type must be one MLflow converts without loss for values sent under the contract's
  type (param values arrive as Python numbers: ``integer -> long``, ``integer -> float``,
  ``integer -> double``, ``float -> double``); ``long -> double`` would round values past 2**53;
- scalar <-> list (``shape`` None vs ``(-1,)``) is refused both ways;
- a changed default is accepted silently by MLflow: recorded as a warning.
"""

from __future__ import annotations

from typing import Any

from mlflow.types.schema import DataType, ParamSchema, ParamSpec

from controller.compatibility.types import describe, unreadable
from controller.compatibility.verdict import Break

_PARAM_WIDENINGS: frozenset[tuple[DataType, DataType]] = frozenset(
    {
        (DataType.integer, DataType.long),
        (DataType.integer, DataType.float),
        (DataType.integer, DataType.double),
        (DataType.float, DataType.double),
    }
)


def _describe(spec: ParamSpec) -> str:
    t = describe(spec.dtype)
    return f"list of {t}" if spec.shape is not None else t


def compare(
    contract: ParamSchema | None, version: ParamSchema | None
) -> tuple[list[Break], list[str]]:
    ours = {p.name: p for p in (contract.params if contract else [])}
    theirs = {p.name: p for p in (version.params if version else [])}
    breaks: list[Break] = []
    warnings: list[str] = []
    for name, c in ours.items():
        v = theirs.get(name)
        if v is None:
            warnings.append(
                f"param '{name}' ({_describe(c)}) is not declared by this version; MLflow drops "
                "it when a client sets it"
            )
            continue
        breaks += _changed(name, c, v)
        if c.default != v.default and (c.shape is None) == (v.shape is None):
            warnings.append(
                f"param '{name}': its default changes from {c.default!r} to {v.default!r}; "
                "clients that leave it out get the new one"
            )
    for name, v in theirs.items():
        if name not in ours and v.default is None:
            breaks.append(
                Break(
                    "param",
                    name,
                    f"param '{name}' ({_describe(v)}) is new in this version and has no default; "
                    "clients written against the contract do not set it (give it a default)",
                )
            )
    return breaks, warnings


def _changed(name: str, c: ParamSpec, v: ParamSpec) -> list[Break]:
    if (c.shape is None) != (v.shape is None):
        return [
            Break(
                "param",
                name,
                f"param '{name}': the contract takes {_describe(c)}, this version takes "
                f"{_describe(v)}, and MLflow refuses a scalar for a list and a list for a scalar",
            )
        ]
    problem = _type_problem(c.dtype, v.dtype)
    if problem is None:
        return []
    return [
        Break(
            "param",
            name,
            f"param '{name}': the contract sends {describe(c.dtype)}, this version takes "
            f"{describe(v.dtype)}{problem}",
        )
    ]


def _type_problem(sent: Any, read: Any) -> str | None:
    if isinstance(sent, DataType) and isinstance(read, DataType):
        if sent == read or (sent, read) in _PARAM_WIDENINGS:
            return None
        if sent == DataType.long and read in (DataType.float, DataType.double):
            return ", which rounds values past 2**53"
        if (sent, read) in {(DataType.long, DataType.integer), (DataType.double, DataType.float)}:
            return ", a narrower type that values sent under the contract may not fit"
        return ", which MLflow refuses"
    problems = unreadable(sent, read)
    return f": {'; '.join(problems)}" if problems else None

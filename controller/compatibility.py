"""Will every client written against the contract keep working with this version?

``check`` is the one function that decides; it is pure (signatures in, verdict out) so it can be
tested without a registry and replaced rule by rule. Policies:

- ``exact``: the version's signature must equal the contract (the notebook's rule).
- ``none``: anything goes, even no signature.

Reasons are sentences a person can act on: they name the field, what the contract says and what
the version does instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from controller.records import Signature


class Policy(StrEnum):
    EXACT = "exact"
    NONE = "none"


@dataclass(frozen=True)
class Verdict:
    compatible: bool
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Field:
    name: str | None
    type: str
    required: bool

    def describe(self) -> str:
        return f"{self.type}, {'required' if self.required else 'optional'}"


def _type_of(spec: dict[str, Any]) -> str:
    if spec.get("type") == "tensor":
        tensor = spec.get("tensor-spec", {})
        return f"tensor<{tensor.get('dtype')}>{tuple(tensor.get('shape', ()))}"
    if spec.get("type") == "array":
        return f"array<{_type_of(spec.get('items', {}))}>"
    if spec.get("type") == "object":
        props = spec.get("properties", {})
        inner = ", ".join(f"{k}: {_type_of(v)}" for k, v in sorted(props.items()))
        return f"object<{inner}>"
    return str(spec.get("type"))


def _fields(signature: Signature | None, part: str) -> list[Field]:
    raw = (signature or {}).get(part)
    if not raw:
        return []
    specs = json.loads(raw) if isinstance(raw, str) else raw
    return [
        Field(name=s.get("name"), type=_type_of(s), required=bool(s.get("required", True)))
        for s in specs
    ]


def _params(signature: Signature | None) -> dict[str, dict[str, Any]]:
    raw = (signature or {}).get("params")
    if not raw:
        return {}
    specs = json.loads(raw) if isinstance(raw, str) else raw
    return {s["name"]: s for s in specs}


def _label(f: Field, index: int) -> str:
    return f"'{f.name}'" if f.name is not None else f"#{index}"


def _diff_fields(kind: str, contract: list[Field], candidate: list[Field]) -> list[str]:
    reasons: list[str] = []
    theirs = {f.name if f.name is not None else str(i): f for i, f in enumerate(candidate)}
    ours = {f.name if f.name is not None else str(i): f for i, f in enumerate(contract)}
    extra = [k for k in theirs if k not in ours]
    verb = "reads" if kind == "input" else "writes"
    for i, (key, f) in enumerate(ours.items()):
        other = theirs.get(key)
        if other is None:
            instead = f"; this version {verb} {', '.join(repr(k) for k in extra)}" if extra else ""
            reasons.append(f"{kind} {_label(f, i)} ({f.describe()}) is missing{instead}")
        elif other.type != f.type or other.required != f.required:
            reasons.append(
                f"{kind} {_label(f, i)} is {other.describe()} in this version; "
                f"the contract says {f.describe()}"
            )
    for key in extra:
        f = theirs[key]
        reasons.append(f"{kind} '{key}' ({f.describe()}) is not in the contract")
    return reasons


def _exact(contract: Signature, candidate: Signature) -> list[str]:
    reasons = _diff_fields("input", _fields(contract, "inputs"), _fields(candidate, "inputs"))
    reasons += _diff_fields("output", _fields(contract, "outputs"), _fields(candidate, "outputs"))
    ours, theirs = _params(contract), _params(candidate)
    for name, spec in ours.items():
        other = theirs.get(name)
        if other is None:
            reasons.append(f"param '{name}' ({spec.get('type')}) is missing in this version")
        elif other != spec:
            reasons.append(
                f"param '{name}' is {other.get('type')} with default {other.get('default')!r} "
                f"in this version; the contract says {spec.get('type')} with default "
                f"{spec.get('default')!r}"
            )
    for name in theirs.keys() - ours.keys():
        reasons.append(f"param '{name}' ({theirs[name].get('type')}) is not in the contract")
    return reasons


def check(contract: Signature | None, candidate: Signature | None, policy: Policy) -> Verdict:
    if policy is Policy.NONE:
        return Verdict(True)
    if candidate is None:
        return Verdict(
            False,
            [
                "this version has no signature, so it cannot be checked; log it with a signature "
                "or set the model's policy to 'none'"
            ],
        )
    if contract is None:
        return Verdict(
            False,
            [
                "the model has no contract (its default version has no signature); pin a default "
                "version that has one"
            ],
        )
    reasons = _exact(contract, candidate)
    return Verdict(not reasons, reasons)

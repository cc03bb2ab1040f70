"""The ``exact`` policy: the notebook's rule, the version's signature must equal the contract.

Compared on MLflow's JSON form, field by field, so each difference gets its own sentence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from controller.compatibility.verdict import Break, Part
from controller.records import Signature


@dataclass(frozen=True)
class _Field:
    key: str
    type: str
    required: bool

    @property
    def label(self) -> str:
        return self.key if self.key.startswith("#") else f"'{self.key}'"

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
    if spec.get("type") == "map":
        return f"map<{_type_of(spec.get('values', {}))}>"
    return str(spec.get("type"))


def _specs(signature: Signature, part: str) -> list[dict[str, Any]]:
    raw = signature.get(part)
    if not raw:
        return []
    specs = json.loads(raw) if isinstance(raw, str) else raw
    return list(specs)


def _fields(signature: Signature, part: str) -> dict[str, _Field]:
    out: dict[str, _Field] = {}
    for i, s in enumerate(_specs(signature, part)):
        key = str(s["name"]) if s.get("name") is not None else f"#{i}"
        out[key] = _Field(key, _type_of(s), bool(s.get("required", True)))
    return out


def _diff_fields(
    part: Part, contract: dict[str, _Field], candidate: dict[str, _Field]
) -> list[Break]:
    breaks: list[Break] = []
    extra = [k for k in candidate if k not in contract]
    verb = "reads" if part == "input" else "writes"
    for key, f in contract.items():
        other = candidate.get(key)
        if other is None:
            instead = (
                f"; this version {verb} {', '.join(candidate[k].label for k in extra)}"
                if extra
                else ""
            )
            breaks.append(
                Break(part, key, f"{part} {f.label} ({f.describe()}) is missing{instead}")
            )
        elif other != f:
            breaks.append(
                Break(
                    part,
                    key,
                    f"{part} {f.label} is {other.describe()} in this "
                    f"version; the contract says {f.describe()}",
                )
            )
    for key in extra:
        f = candidate[key]
        breaks.append(Break(part, key, f"{part} {f.label} ({f.describe()}) is not in the contract"))
    return breaks


def compare(contract: Signature, candidate: Signature) -> list[Break]:
    breaks = _diff_fields("input", _fields(contract, "inputs"), _fields(candidate, "inputs"))
    breaks += _diff_fields("output", _fields(contract, "outputs"), _fields(candidate, "outputs"))
    ours = {str(s["name"]): s for s in _specs(contract, "params")}
    theirs = {str(s["name"]): s for s in _specs(candidate, "params")}
    for name, spec in ours.items():
        other = theirs.get(name)
        if other is None:
            breaks.append(
                Break(
                    "param", name, f"param '{name}' ({spec.get('type')}) is missing in this version"
                )
            )
        elif other != spec:
            breaks.append(
                Break(
                    "param",
                    name,
                    f"param '{name}' is {other.get('type')} with default {other.get('default')!r} "
                    f"in this version; the contract says {spec.get('type')} with default "
                    f"{spec.get('default')!r}",
                )
            )
    for name in theirs.keys() - ours.keys():
        breaks.append(
            Break(
                "param", name, f"param '{name}' ({theirs[name].get('type')}) is not in the contract"
            )
        )
    return breaks

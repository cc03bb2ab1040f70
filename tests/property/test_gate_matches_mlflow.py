"""The compatibility gate, held to MLflow itself.

The gate (``controller.compatibility.check``, policy ``backward``) promises that every client
written against the contract keeps working with a version it lets through. The oracle is MLflow's
own enforcement, on the two paths a request takes (see ``tests.property.enforcement``): a request
counts as valid under the contract only if MLflow accepts it for the contract itself, and a
version the gate calls compatible must accept every such request.

- P1: compatible => every request valid under the contract is accepted for the version
  (in-process and JSON), and the version's model gets as many records as the contract's would
  (MLflow reads a one-record dict as one row or as columns depending on the schema).
- P2: breaking => every break names a field (or a kind) that really differs between the two.
- P3: equal signatures are compatible under ``backward`` and ``exact``; ``none`` accepts all.

Outputs are not enforced by MLflow, so no property here speaks for output rules. Counterexamples
the properties found are kept below as fixed cases (``FOUND``), checked on every run.
Examples run per property: ``pytest tests/property --hypothesis-show-statistics``; more of them:
``HYPOTHESIS_PROFILE=thorough`` (see conftest.py).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from controller.compatibility import Policy, Verdict, check
from tests.property.enforcement import Outcome, SignatureDict, enforce_in_process, enforce_json
from tests.property.signatures import (
    InProcessRequest,
    JsonRequest,
    in_process_requests,
    json_requests,
    signature_pairs,
    sigs,
)

PARTS = {"input": "inputs", "output": "outputs", "param": "params"}
IN_PROCESS = "in-process: PyFuncModel.predict's _enforce_schema/_enforce_params_schema"
JSON = "JSON: the scoring server's _parse_json_data, then predict's enforcement"


def _shown(signature: SignatureDict | None) -> str:
    if signature is None:
        return "None (no signature)"
    return json.dumps(
        {k: json.loads(v) if isinstance(v, str) else v for k, v in signature.items()},
        sort_keys=True,
    )


def _verdict_shown(verdict: Verdict) -> str:
    return (
        f"compatible={verdict.compatible} reasons={verdict.reasons!r} warnings={verdict.warnings!r}"
    )


def _p1_failure(
    path: str,
    contract: SignatureDict,
    version: SignatureDict | None,
    request: InProcessRequest | JsonRequest,
    what: str,
    verdict: Verdict,
) -> str:
    return (
        f"check(contract, version, BACKWARD) let the version through, but MLflow ({path}) "
        "treats a request valid under the contract differently for the version.\n"
        f"  contract: {_shown(contract)}\n"
        f"  version:  {_shown(version)}\n"
        f"  request:  {request!r}\n"
        f"  {what}\n"
        f"  verdict:  {_verdict_shown(verdict)}"
    )


def _p1_check(
    path: str,
    contract: SignatureDict,
    version: SignatureDict | None,
    request: InProcessRequest | JsonRequest,
    ours: Outcome,
    theirs: Outcome,
    verdict: Verdict,
) -> None:
    """The version accepts the request, and its model gets as many records as the contract's."""
    if theirs.error is not None:
        pytest.fail(
            _p1_failure(
                path,
                contract,
                version,
                request,
                f"MLflow says for the version: {theirs.error}",
                verdict,
            ),
        )
    if ours.rows is not None and theirs.rows is not None and ours.rows != theirs.rows:
        pytest.fail(
            _p1_failure(
                path,
                contract,
                version,
                request,
                f"MLflow accepts it for both, but the contract's model gets {ours.rows} record(s) "
                f"and the version's {theirs.rows}:\n{ours.data!r}\n  versus\n{theirs.data!r}",
                verdict,
            ),
        )


def _pair_event(contract: SignatureDict | None, version: SignatureDict | None) -> None:
    event("pair: equal" if contract == version else "pair: different")


# --- P1 ---------------------------------------------------------------------------------------


@given(pair=signature_pairs(), data=st.data())
def test_p1_compatible_version_accepts_every_valid_in_process_request(
    pair: tuple[SignatureDict | None, SignatureDict | None], data: st.DataObject
) -> None:
    contract, version = pair
    verdict = check(contract, version, Policy.BACKWARD)
    assume(verdict.compatible and contract is not None)
    assert contract is not None
    _pair_event(contract, version)
    requests = data.draw(st.lists(in_process_requests(contract), min_size=1, max_size=2))
    outcomes = [(r, enforce_in_process(contract, r.data(), r.params)) for r in requests]
    valid = [(r, o) for r, o in outcomes if o.error is None]
    event(f"requests valid under the contract: {len(valid)} of {len(requests)}")
    for r, _ in valid:
        event(f"valid in-process form: {r.form}")
    assume(valid)
    for request, ours in valid:
        theirs = enforce_in_process(version, request.data(), request.params)
        _p1_check(IN_PROCESS, contract, version, request, ours, theirs, verdict)


@given(pair=signature_pairs(), data=st.data())
def test_p1_compatible_version_accepts_every_valid_json_request(
    pair: tuple[SignatureDict | None, SignatureDict | None], data: st.DataObject
) -> None:
    contract, version = pair
    verdict = check(contract, version, Policy.BACKWARD)
    assume(verdict.compatible and contract is not None)
    assert contract is not None
    _pair_event(contract, version)
    requests = data.draw(st.lists(json_requests(contract), min_size=1, max_size=2))
    outcomes = [(r, enforce_json(contract, r.body)) for r in requests]
    valid = [(r, o) for r, o in outcomes if o.error is None]
    event(f"requests valid under the contract: {len(valid)} of {len(requests)}")
    for r, _ in valid:
        event(f"valid JSON form: {r.form}")
    assume(valid)
    for request, ours in valid:
        theirs = enforce_json(version, request.body)
        _p1_check(JSON, contract, version, request, ours, theirs, verdict)


# --- P2 ---------------------------------------------------------------------------------------


def _specs(signature: SignatureDict | None, part: str) -> list[dict[str, Any]] | None:
    raw = signature.get(PARTS[part]) if signature is not None else None
    if not raw:
        return None
    specs = json.loads(raw) if isinstance(raw, str) else raw
    assert isinstance(specs, list)
    return specs


def _find(specs: list[dict[str, Any]] | None, field: str) -> tuple[int, dict[str, Any]] | None:
    if specs is None:
        return None
    if field.startswith("#") and field[1:].isdigit():
        i = int(field[1:])
        return (i, specs[i]) if i < len(specs) else None
    for i, spec in enumerate(specs):
        if spec.get("name") == field:
            return i, spec
    return None


def _kind(signature: SignatureDict | None, part: str) -> str:
    """The kind of one part of a signature: whole-signature differences the gate may report
    without a field (no signature, no outputs, column vs tensor, named vs unnamed)."""
    if signature is None:
        return "no signature"
    specs = _specs(signature, part)
    if specs is None:
        return "absent"
    if part == "param":
        return "params"
    based = "tensor" if all(s.get("type") == "tensor" for s in specs) else "column"
    named = "named" if all("name" in s for s in specs) else "unnamed"
    return f"{based}-based {named}"


def _kinds_differ(contract: SignatureDict | None, version: SignatureDict | None, part: str) -> bool:
    if contract is None or version is None:
        return True  # a missing signature: nothing to compare field by field
    parts = PARTS if part == "signature" else [part]
    return any(_kind(contract, p) != _kind(version, p) for p in parts)


@given(pair=signature_pairs())
def test_p2_every_break_names_a_real_difference(
    pair: tuple[SignatureDict | None, SignatureDict | None],
) -> None:
    contract, version = pair
    verdict = check(contract, version, Policy.BACKWARD)
    assume(not verdict.compatible)
    _pair_event(contract, version)
    shown = f"\n  contract: {_shown(contract)}\n  version:  {_shown(version)}"
    assert verdict.breaks, f"a breaking verdict gives no break: {_verdict_shown(verdict)}{shown}"
    for b in verdict.breaks:
        event(f"break: {b.part}, {'kind-level' if b.field is None else 'field'}")
        assert b.part in (*PARTS, "signature"), f"unknown part in {b!r}{shown}"
        if b.field is None:
            assert _kinds_differ(contract, version, b.part), (
                f"{b!r} names no field, but the two have the same kind of {b.part} "
                f"({_kind(contract, b.part)} in both){shown}"
            )
            continue
        assert b.part != "signature", f"{b!r}: a whole-signature break names a field{shown}"
        ours = _find(_specs(contract, b.part), b.field)
        theirs = _find(_specs(version, b.part), b.field)
        assert ours is None or theirs is None or ours != theirs, (
            f"{b!r} names {b.part} {b.field!r}, which is the same in both "
            f"(position {ours[0] if ours else None}, spec {ours[1] if ours else None}){shown}"
        )
        label = b.field if b.field.startswith("#") else f"'{b.field}'"
        assert label in b.reason, f"{b!r}: the reason does not name {label}{shown}"


# --- P3 ---------------------------------------------------------------------------------------


@given(signature=sigs().map(lambda s: s.to_dict()))
def test_p3_equal_signatures_are_compatible(signature: SignatureDict) -> None:
    for policy in (Policy.BACKWARD, Policy.EXACT):
        verdict = check(signature, copy.deepcopy(signature), policy)
        assert verdict.compatible, (
            f"{policy}: a signature is not compatible with itself: {_verdict_shown(verdict)}\n"
            f"  signature: {_shown(signature)}"
        )


@given(pair=signature_pairs())
def test_p3_policy_none_lets_everything_through(
    pair: tuple[SignatureDict | None, SignatureDict | None],
) -> None:
    contract, version = pair
    verdict = check(contract, version, Policy.NONE)
    assert verdict.compatible, (
        f"policy none refused: {_verdict_shown(verdict)}\n"
        f"  contract: {_shown(contract)}\n  version:  {_shown(version)}"
    )


# --- counterexamples found by the properties, kept as fixed examples ---------------------------


def _sig(*columns: dict[str, Any]) -> SignatureDict:
    return {"inputs": json.dumps(list(columns)), "outputs": None, "params": None}


_LONG_A = {"type": "long", "name": "a", "required": True}
_INTEGER = {"type": "integer", "required": True}
_ARRAY_B = {"type": "array", "items": {"type": "long"}, "name": "b", "required": False}
_OBJECT_B = {
    "type": "object",
    "properties": {"x": {"type": "long", "required": True}},
    "name": "b",
    "required": False,
}

FOUND: list[tuple[str, SignatureDict, SignatureDict, InProcessRequest | JsonRequest]] = [
    # A new optional Array/Object input makes MLflow read a dict as ONE record: columnar
    # requests (and `instances`, which MLflow turns into columns) stop working.
    (
        "optional array added; instances",
        _sig(_LONG_A),
        _sig(_LONG_A, _ARRAY_B),
        JsonRequest("instances", json.dumps({"instances": [{"a": 1}]})),
    ),
    (
        "optional object added; inputs as columns",
        _sig(_LONG_A),
        _sig(_LONG_A, _OBJECT_B),
        JsonRequest("inputs columns", json.dumps({"inputs": {"a": [1, 2]}})),
    ),
    (
        "optional array added; in-process dict of columns",
        _sig(_LONG_A),
        _sig(_LONG_A, _ARRAY_B),
        InProcessRequest(
            "dict of columns", lambda: {"a": np.array([1, 2])}, None, "{'a': array([1, 2])}"
        ),
    ),
    # Unnamed columns: MLflow parses a JSON list of rows (`inputs`, `instances`) with the FIRST
    # column's type for every value, so widening column #0 changes how #1 is read.
    (
        "unnamed column #0 widened; inputs as rows",
        {"inputs": json.dumps([_INTEGER, _INTEGER]), "outputs": None, "params": None},
        {
            "inputs": json.dumps([{**_INTEGER, "type": "long"}, _INTEGER]),
            "outputs": None,
            "params": None,
        },
        JsonRequest("inputs", json.dumps({"inputs": [[1, 2]]})),
    ),
    # A string (or binary, datetime) input read as Any: MLflow keeps a JSON list of strings as a
    # list and then reads a dict whose values are all lists of strings as ONE record.
    (
        "string input read as any; inputs as columns",
        _sig({"type": "string", "name": "a", "required": True}),
        _sig({"type": "any", "name": "a", "required": True}),
        JsonRequest("inputs columns", json.dumps({"inputs": {"a": ["x", "y"]}})),
    ),
    # The other way round: the last Array column becomes Any, and a one-record dict is read as
    # columns, so the version's model gets two records where the contract's got one.
    (
        "array input read as any; inputs one record",
        _sig(_LONG_A, {**_ARRAY_B, "required": True}),
        _sig(_LONG_A, {"type": "any", "name": "b", "required": True}),
        JsonRequest("inputs one record", json.dumps({"inputs": {"a": 1, "b": [1, 2]}})),
    ),
]


@pytest.mark.parametrize(
    ("contract", "version", "request_"), [c[1:] for c in FOUND], ids=[c[0] for c in FOUND]
)
def test_p1_found_counterexamples(
    contract: SignatureDict, version: SignatureDict, request_: InProcessRequest | JsonRequest
) -> None:
    verdict = check(contract, version, Policy.BACKWARD)
    if not verdict.compatible:
        return  # the gate refuses the version: nothing to hold against MLflow
    if isinstance(request_, JsonRequest):
        ours, theirs = enforce_json(contract, request_.body), enforce_json(version, request_.body)
        path = JSON
    else:
        ours = enforce_in_process(contract, request_.data(), request_.params)
        theirs = enforce_in_process(version, request_.data(), request_.params)
        path = IN_PROCESS
    assert ours.error is None, f"not a request valid under the contract: {ours.error}"
    _p1_check(path, contract, version, request_, ours, theirs, verdict)

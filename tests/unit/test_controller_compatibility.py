"""The exact policy and the reasons a person reads when a version is quarantined."""

from __future__ import annotations

import json

from controller.compatibility import Policy, check


def sig(inputs: list[dict[str, object]], outputs: list[dict[str, object]] | None = None,
        params: list[dict[str, object]] | None = None) -> dict[str, str | None]:
    return {
        "inputs": json.dumps(inputs),
        "outputs": json.dumps(outputs or [{"type": "string", "name": "translation_text",
                                           "required": True}]),
        "params": json.dumps(params) if params else None,
    }


PROMPT = sig([{"type": "string", "name": "prompt", "required": True}])


def test_identical_signature_is_compatible() -> None:
    assert check(PROMPT, dict(PROMPT), Policy.EXACT).compatible


def test_renamed_input_names_both_fields() -> None:
    renamed = sig([{"type": "string", "name": "text_to_translate", "required": True}])
    verdict = check(PROMPT, renamed, Policy.EXACT)
    assert not verdict.compatible
    assert verdict.reasons[0] == (
        "input 'prompt' (string, required) is missing; this version reads 'text_to_translate'"
    )
    assert "input 'text_to_translate' (string, required) is not in the contract" in verdict.reasons


def test_type_and_optionality_changes_are_named() -> None:
    changed = sig([{"type": "long", "name": "prompt", "required": False}])
    verdict = check(PROMPT, changed, Policy.EXACT)
    assert verdict.reasons == [
        "input 'prompt' is long, optional in this version; the contract says string, required"
    ]


def test_output_and_param_differences() -> None:
    base = sig([{"type": "string", "name": "prompt", "required": True}],
               params=[{"name": "max_tokens", "type": "long", "default": 20, "shape": None}])
    other = sig([{"type": "string", "name": "prompt", "required": True}],
                outputs=[{"type": "string", "name": "text", "required": True}],
                params=[{"name": "max_tokens", "type": "double", "default": 20.0, "shape": None}])
    reasons = check(base, other, Policy.EXACT).reasons
    assert any(r.startswith("output 'translation_text' (string, required) is missing")
               for r in reasons)
    assert any(r.startswith("param 'max_tokens' is double") for r in reasons)


def test_missing_signature_is_quarantined_unless_policy_none() -> None:
    assert not check(PROMPT, None, Policy.EXACT).compatible
    assert "no signature" in check(PROMPT, None, Policy.EXACT).reasons[0]
    assert check(PROMPT, None, Policy.NONE).compatible

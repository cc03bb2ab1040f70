"""The backward policy, rule by rule, both sides: what keeps clients working and what breaks them.

Each breaking case also checks that the reason names the field and both types, so a person can
act on it. The property test (tests/property) holds the same rules to MLflow's enforcement.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from mlflow.models import ModelSignature
from mlflow.types.schema import (
    AnyType,
    Array,
    ColSpec,
    Map,
    Object,
    ParamSchema,
    ParamSpec,
    Property,
    Schema,
    TensorSpec,
)

from controller.compatibility import Policy, Verdict, check

OUT = Schema([ColSpec("string", "answer")])


def sig(inputs: list[Any] | None, outputs: Schema | None = OUT,
        params: list[ParamSpec] | None = None) -> dict[str, Any]:
    return dict(ModelSignature(
        inputs=Schema(inputs) if inputs is not None else None,
        outputs=outputs,
        params=ParamSchema(params) if params else None,
    ).to_dict())


def backward(contract: dict[str, Any], version: dict[str, Any]) -> Verdict:
    return check(contract, version, Policy.BACKWARD)


def col(t: Any, name: str = "x", required: bool = True) -> ColSpec:
    return ColSpec(t, name, required=required)


def one_reason(verdict: Verdict) -> str:
    assert not verdict.compatible
    assert len(verdict.reasons) == 1, verdict.reasons
    return verdict.reasons[0]


# --- column types -------------------------------------------------------------------------

@pytest.mark.parametrize(("sent", "read"), [
    ("integer", "long"), ("integer", "double"), ("float", "double"),
    *[(t, t) for t in ("boolean", "integer", "long", "float", "double", "string", "binary",
                       "datetime")],
])
def test_identical_and_safely_widened_inputs_are_compatible(sent: str, read: str) -> None:
    assert backward(sig([col(sent)]), sig([col(read)])).compatible


@pytest.mark.parametrize(("sent", "read"), [
    ("long", "double"), ("long", "float"), ("integer", "float"), ("long", "integer"),
    ("double", "float"), ("double", "long"), ("string", "long"), ("boolean", "long"),
    ("string", "binary"), ("binary", "string"), ("string", "datetime"), ("datetime", "string"),
])
def test_unsafe_input_types_name_field_and_both_types(sent: str, read: str) -> None:
    reason = one_reason(backward(sig([col(sent, "n")]), sig([col(read, "n")])))
    assert reason.startswith(f"input 'n': the contract sends {sent}, this version reads {read}")
    assert "MLflow" in reason


def test_long_to_double_reason_reads_like_the_design() -> None:
    reason = one_reason(backward(sig([col("long", "n")]), sig([col("double", "n")])))
    assert reason == ("input 'n': the contract sends long, this version reads double, "
                      "which MLflow refuses (it would lose precision)")


# --- presence and optionality of inputs ----------------------------------------------------

def test_new_optional_input_is_compatible_new_required_breaks() -> None:
    base = sig([col("string", "prompt")])
    assert backward(base, sig([col("string", "prompt"), col("long", "k", False)])).compatible
    reason = one_reason(backward(base, sig([col("string", "prompt"), col("long", "k")])))
    assert reason.startswith("input 'k' (long, required) is new and required")


def test_removed_input_breaks_required_or_optional() -> None:
    base = sig([col("string", "prompt"), col("long", "k", False)])
    assert "input 'k' (long, optional) is missing" in one_reason(
        backward(base, sig([col("string", "prompt")])))
    assert "input 'prompt' (string, required) is missing" in one_reason(
        backward(base, sig([col("long", "k", False)])))


def test_renamed_input_names_both_fields() -> None:
    verdict = backward(sig([col("string", "prompt")]), sig([col("string", "text_to_translate")]))
    assert verdict.reasons[0] == (
        "input 'prompt' (string, required) is missing; this version reads 'text_to_translate'")
    assert any(r.startswith("input 'text_to_translate' (string, required) is new")
               for r in verdict.reasons)


def test_optional_made_required_breaks_required_made_optional_does_not() -> None:
    assert backward(sig([col("long", "k")]), sig([col("long", "k", False)])).compatible
    reason = one_reason(backward(sig([col("long", "k", False)]), sig([col("long", "k")])))
    assert reason.startswith("input 'k' is optional in the contract but required")


def test_unnamed_columns_positional() -> None:
    two = sig([ColSpec("string"), ColSpec("integer")])
    assert backward(two, sig([ColSpec("string"), ColSpec("long")])).compatible
    assert "input #1 (integer, required) is missing" in one_reason(
        backward(two, sig([ColSpec("string")])))
    assert one_reason(backward(two, sig([ColSpec("string"), ColSpec("string")]))).startswith(
        "input #1: the contract sends integer, this version reads string")


def test_named_vs_unnamed_and_columns_vs_tensors_break_as_a_whole() -> None:
    named = sig([col("string", "prompt")])
    unnamed = sig([ColSpec("string")])
    tensor = sig([TensorSpec(np.dtype("float32"), (-1, 4))])
    assert "named columns, this version's are unnamed columns" in one_reason(
        backward(named, unnamed))
    assert "unnamed tensors" in one_reason(backward(named, tensor))
    assert backward(named, unnamed).breaks[0].field is None


# --- nested types ---------------------------------------------------------------------------

def test_array_elements_follow_the_scalar_rules() -> None:
    assert backward(sig([col(Array("float"), "v")]), sig([col(Array("double"), "v")])).compatible
    assert backward(sig([col(Array(Array("integer")), "v")]),
                    sig([col(Array(Array("long")), "v")])).compatible
    reason = one_reason(backward(sig([col(Array(Array("long")), "v")]),
                                 sig([col(Array(Array("double")), "v")])))
    assert reason.startswith("input 'v': the contract sends array<array<long>>, this version "
                             "reads array<array<double>>: long is read as double at '[][]'")


def test_array_vs_scalar_breaks() -> None:
    verdict = backward(sig([col("string", "v")]), sig([col(Array("string"), "v")]))
    assert any("string is read as array<string>" in r for r in verdict.reasons)


def obj(*props: Property) -> Object:
    return Object(list(props))


def test_object_properties() -> None:
    base = sig([col(obj(Property("zip", "integer"), Property("city", "string", False)), "a")])
    widened = sig([col(obj(Property("zip", "long"), Property("city", "string", False),
                           Property("street", "string", False)), "a")])
    assert backward(base, widened).compatible
    dropped = sig([col(obj(Property("zip", "integer")), "a")])
    assert "property '.city' is sent but not declared" in one_reason(backward(base, dropped))
    new_required = sig([col(obj(Property("zip", "integer"), Property("city", "string", False),
                                Property("street", "string")), "a")])
    assert "property '.street' is required by the reader but never sent" in one_reason(
        backward(base, new_required))
    now_required = sig([col(obj(Property("zip", "integer"), Property("city", "string")), "a")])
    assert "property '.city' is required by the reader but may be left out" in one_reason(
        backward(base, now_required))
    narrowed = sig([col(obj(Property("zip", "string"), Property("city", "string", False)), "a")])
    assert "integer is read as string at '.zip'" in one_reason(backward(base, narrowed))


def test_map_values() -> None:
    assert backward(sig([col(Map("integer"), "m")]), sig([col(Map("long"), "m")])).compatible
    assert "long is read as integer at '{}'" in one_reason(
        backward(sig([col(Map("long"), "m")]), sig([col(Map("integer"), "m")])))


def test_any_type_reads_anything_nested_but_not_at_the_top() -> None:
    assert backward(sig([col(Array("long"), "x")]), sig([col(Array(AnyType()), "x")])).compatible
    assert backward(sig([col(Map("string"), "x")]), sig([col(Map(AnyType()), "x")])).compatible
    assert "any is read as long" in one_reason(
        backward(sig([col(AnyType(), "x")]), sig([col("long", "x")])))
    # At the top, MLflow stops converting a column read as any: {"inputs": {"x": ["a", "b"]}}
    # would be one record holding a list instead of two records.
    assert "stops converting an input read as any" in one_reason(
        backward(sig([col("string", "x")]), sig([col(AnyType(), "x")])))


def test_the_first_or_last_array_or_object_input_changes_how_mlflow_reads_a_dict() -> None:
    scalar = sig([col("long", "a")])
    with_array = sig([col("long", "a"), col(Array("long"), "b", False)])
    reason = one_reason(backward(scalar, with_array))
    assert reason.startswith("input 'b' is array<long> in this version only")
    assert "reads a JSON object as one record" in reason
    dropped = one_reason(backward(sig([col("long", "a"), col(Array("long"), "b")]),
                                  sig([col("long", "a"), col(AnyType(), "b")])))
    assert dropped.startswith("input 'b' is array<long> in the contract only")
    # With an array input on both sides, another optional one changes nothing.
    assert backward(with_array, sig([col("long", "a"), col(Array("long"), "b", False),
                                     col(obj(Property("k", "string")), "c", False)])).compatible


def test_unnamed_rows_are_parsed_with_the_first_columns_type() -> None:
    ints = sig([ColSpec("integer"), ColSpec("integer")])
    reason = one_reason(backward(ints, sig([ColSpec("long"), ColSpec("integer")])))
    assert reason.startswith("input #0 is long in this version, integer in the contract")
    assert "#1 (integer) cannot read long" in reason
    assert backward(ints, sig([ColSpec("long"), ColSpec("long")])).compatible
    assert backward(ints, sig([ColSpec("integer"), ColSpec("long")])).compatible


# --- tensors --------------------------------------------------------------------------------

def tensor(dtype: str, shape: tuple[int, ...], name: str | None = None) -> TensorSpec:
    return TensorSpec(np.dtype(dtype), shape, name)


def test_tensor_dtype_and_shape_must_be_equal() -> None:
    base = sig([tensor("float32", (-1, 4), "x")])
    assert backward(base, sig([tensor("float32", (-1, 4), "x")])).compatible
    assert "dtype is float32 in the contract and float64" in one_reason(
        backward(base, sig([tensor("float64", (-1, 4), "x")])))
    assert "shape is (-1, 4) in the contract and (-1, -1)" in one_reason(
        backward(base, sig([tensor("float32", (-1, -1), "x")])))


def test_tensor_names() -> None:
    base = sig([tensor("int64", (-1,), "a")])
    assert "input 'a' (tensor int64 (-1,), required) is missing" in backward(
        base, sig([tensor("int64", (-1,), "b")])).reasons[0]
    assert "unnamed tensors" in one_reason(backward(base, sig([tensor("int64", (-1,))])))


# --- outputs --------------------------------------------------------------------------------

def test_outputs_may_grow_and_narrow_but_not_shrink_or_widen() -> None:
    base = sig([col("string", "p")], Schema([ColSpec("long", "score")]))
    assert backward(base, sig([col("string", "p")],
                              Schema([ColSpec("integer", "score"),
                                      ColSpec("string", "label")]))).compatible
    assert one_reason(backward(base, sig([col("string", "p")],
                                         Schema([ColSpec("double", "score")])))).startswith(
        "output 'score': this version writes double, the contract promises long")
    assert "output 'score' (long, required) is missing" in one_reason(
        backward(base, sig([col("string", "p")], Schema([ColSpec("long", "other")]))))
    assert "required in the contract but optional" in one_reason(
        backward(base, sig([col("string", "p")], Schema([ColSpec("long", "score", False)]))))


def test_output_objects_may_gain_properties() -> None:
    base = sig([col("string", "p")], Schema([ColSpec(obj(Property("a", "long")), "o")]))
    grown = sig([col("string", "p")], Schema([ColSpec(obj(Property("a", "long"),
                                                           Property("b", "string")), "o")]))
    assert backward(base, grown).compatible
    shrunk = sig([col("string", "p")], Schema([ColSpec(obj(Property("b", "string")), "o")]))
    assert "property '.a' is required by the reader but never sent" in one_reason(
        backward(grown, shrunk))


def test_no_outputs() -> None:
    assert backward(sig([col("string", "p")], None), sig([col("string", "p")])).compatible
    assert "declares no outputs" in one_reason(backward(sig([col("string", "p")]),
                                                        sig([col("string", "p")], None)))


def test_tensor_outputs_must_be_equal() -> None:
    base = sig([col("string", "p")], Schema([tensor("float32", (-1, 384))]))
    assert backward(base, sig([col("string", "p")], Schema([tensor("float32", (-1, 384))]))
                    ).compatible
    assert not backward(base, sig([col("string", "p")], Schema([tensor("float32", (-1, 768))]))
                        ).compatible


# --- params ---------------------------------------------------------------------------------

P = [col("string", "p")]


def test_new_param_needs_a_default() -> None:
    assert backward(sig(P), sig(P, params=[ParamSpec("k", "long", 3)])).compatible
    assert one_reason(backward(sig(P), sig(P, params=[ParamSpec("k", "long", None)]))) == (
        "param 'k' (long) is new in this version and has no default; clients written against "
        "the contract do not set it (give it a default)")


def test_param_types() -> None:
    for sent, read in [("integer", "long"), ("integer", "double"), ("float", "double")]:
        assert backward(sig(P, params=[ParamSpec("k", sent, 1)]),
                        sig(P, params=[ParamSpec("k", read, 1)])).compatible
    reason = one_reason(backward(sig(P, params=[ParamSpec("k", "long", 1)]),
                                 sig(P, params=[ParamSpec("k", "double", 1.0)])))
    assert reason == ("param 'k': the contract sends long, this version takes double, "
                      "which rounds values past 2**53")
    assert "which MLflow refuses" in one_reason(backward(
        sig(P, params=[ParamSpec("k", "string", "a")]), sig(P, params=[ParamSpec("k", "long", 1)])))


def test_param_shape_scalar_vs_list_breaks() -> None:
    reason = one_reason(backward(sig(P, params=[ParamSpec("k", "long", 1)]),
                                 sig(P, params=[ParamSpec("k", "long", [1], (-1,))])))
    assert reason.startswith("param 'k': the contract takes long, this version takes list of long")


def test_removed_param_and_changed_default_are_warnings() -> None:
    verdict = backward(sig(P, params=[ParamSpec("k", "long", 1), ParamSpec("t", "double", 0.5)]),
                       sig(P, params=[ParamSpec("k", "long", 2)]))
    assert verdict.compatible
    assert verdict.warnings == [
        "param 'k': its default changes from 1 to 2; clients that leave it out get the new one",
        "param 't' (double) is not declared by this version; MLflow drops it when a client sets "
        "it",
    ]


# --- no signature, policies ------------------------------------------------------------------

def test_no_signature_is_quarantined_unless_policy_none() -> None:
    base = sig(P)
    assert "no signature" in one_reason(backward(base, None))  # type: ignore[arg-type]
    assert check(base, None, Policy.NONE).compatible


def test_equal_signatures_compatible_under_every_policy() -> None:
    base = sig([col(Array(obj(Property("a", "long"))), "x")],
               params=[ParamSpec("k", "long", 1)])
    for policy in Policy:
        assert check(base, dict(base), policy).compatible


def test_exact_is_stricter_than_backward() -> None:
    contract, widened = sig([col("integer", "n")]), sig([col("long", "n")])
    assert backward(contract, widened).compatible
    assert not check(contract, widened, Policy.EXACT).compatible

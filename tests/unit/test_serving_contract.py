"""The contract built from an MLflow signature, and the frames and records around a model."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature
from mlflow.types.schema import (
    Array,
    ColSpec,
    DataType,
    ParamSchema,
    ParamSpec,
    Schema,
    TensorSpec,
)

from serving.contract import contract_for
from serving.exceptions import InvalidInput
from serving.frames import jsonable, to_model_input, to_records


def signature(
    inputs: list[Any], outputs: list[Any] | None = None, params: list[Any] | None = None
) -> dict[str, str | None]:
    sig: Any = ModelSignature(
        Schema(inputs),
        Schema(outputs) if outputs else None,
        ParamSchema(params) if params else None,  # type: ignore[arg-type]
    )
    result: dict[str, str | None] = sig.to_dict()
    return result


TRANSLATE = signature(
    [
        ColSpec("string", "prompt"),
        ColSpec("integer", "max_len", required=False),
        ColSpec(Array(DataType.string), "tags", required=False),
    ],
    [ColSpec("string", "translation_text")],
    [ParamSpec("beams", "long", 4), ParamSpec("temperature", "double", 1.0)],
)


def errors_of(exc: pytest.ExceptionInfo[InvalidInput]) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = exc.value.extensions["errors"]
    return errors


def test_one_record_a_list_and_an_envelope_are_accepted() -> None:
    contract = contract_for("translate", TRANSLATE)
    assert contract.parse({"prompt": "hi"}).records == [{"prompt": "hi"}]
    many = contract.parse([{"prompt": "a", "max_len": 3}, {"prompt": "b"}])
    assert many.records == [{"prompt": "a", "max_len": 3}, {"prompt": "b"}]
    assert many.params is None
    wrapped = contract.parse({"inputs": {"prompt": "a"}, "params": {"beams": 2}})
    assert wrapped.records == [{"prompt": "a"}]
    # Only what the client set: the version's own defaults fill the rest.
    assert wrapped.params == {"beams": 2}


def test_params_take_their_defaults_from_the_signature() -> None:
    contract = contract_for("translate", TRANSLATE)
    assert contract.params is not None
    assert contract.params().model_dump(by_alias=True) == {"beams": 4, "temperature": 1.0}
    with pytest.raises(InvalidInput) as exc:
        contract.parse({"inputs": {"prompt": "a"}, "params": {"beams": "many", "top_k": 1}})
    assert {e["field"] for e in errors_of(exc)} == {"params.beams", "params.top_k"}


def test_a_required_column_is_required_and_an_optional_one_is_not() -> None:
    contract = contract_for("translate", TRANSLATE)
    with pytest.raises(InvalidInput) as exc:
        contract.parse({"max_len": 3})
    assert errors_of(exc) == [{"field": "prompt", "reason": "is required"}]
    # Left out stays out: absent and null are not the same thing to every model.
    assert contract.parse({"prompt": "a", "max_len": None}).records == [
        {"prompt": "a", "max_len": None}
    ]


def test_an_unknown_field_is_refused_by_name() -> None:
    contract = contract_for("translate", TRANSLATE)
    with pytest.raises(InvalidInput) as exc:
        contract.parse([{"prompt": "a"}, {"text_to_translate": "b"}])
    assert errors_of(exc) == [
        {"field": "[1].prompt", "reason": "is required"},
        {"field": "[1].text_to_translate", "reason": "is not an input of this model"},
    ]
    assert exc.value.status == 422


def test_types_follow_the_columns() -> None:
    sig = signature(
        [
            ColSpec("integer", "i"),
            ColSpec("long", "l"),
            ColSpec("double", "d"),
            ColSpec("boolean", "b"),
            ColSpec("binary", "raw"),
            ColSpec("datetime", "at"),
        ]
    )
    contract = contract_for("types", sig)
    record = {
        "i": 1,
        "l": 2**40,
        "d": 0.5,
        "b": True,
        "raw": base64.b64encode(b"\x00\x01").decode(),
        "at": "2024-05-01T10:00:00",
    }
    parsed = contract.parse(record).records[0]
    assert parsed["raw"] == b"\x00\x01"
    assert parsed["at"] == datetime(2024, 5, 1, 10)
    with pytest.raises(InvalidInput) as exc:
        contract.parse({**record, "i": 2**40, "d": "half"})
    assert [e["field"] for e in errors_of(exc)] == ["i", "d"]


def test_a_column_named_inputs_is_a_record_not_an_envelope() -> None:
    contract = contract_for("odd", signature([ColSpec("string", "inputs")]))
    assert contract.parse({"inputs": "x"}).records == [{"inputs": "x"}]


def test_a_column_may_be_called_like_a_pydantic_attribute() -> None:
    contract = contract_for("odd2", signature([ColSpec("string", "model_config")]))
    assert contract.parse({"model_config": "x"}).records == [{"model_config": "x"}]


def test_unnamed_and_tensor_signatures() -> None:
    unnamed = contract_for("unnamed", signature([ColSpec("string")]))
    assert unnamed.parse(["a", "b"]).records == ["a", "b"]
    frame = to_model_input(["a", "b"], ModelSignature.from_dict(signature([ColSpec("string")])))
    assert frame[0].tolist() == ["a", "b"]

    tensor_sig = signature([TensorSpec(np.dtype("float32"), (-1, 2), "x")])
    tensor = contract_for("tensor", tensor_sig)
    request = tensor.parse({"inputs": [[1, 2], [3, 4]]})
    array = to_model_input(request.records, ModelSignature.from_dict(tensor_sig))
    assert array.dtype == np.float32
    assert array.shape == (2, 2)


def test_no_signature_takes_free_records() -> None:
    free = contract_for("free", None)
    records = free.parse([{"a": 1}, {"b": "x"}]).records
    assert list(to_model_input(records, None).columns) == ["a", "b"]


def test_the_frame_follows_the_selected_versions_own_types() -> None:
    # The contract says long; the version reads integer. MLflow refuses int64 for integer.
    contract = contract_for("m", signature([ColSpec("long", "n"), ColSpec("string", "s")]))
    version = ModelSignature.from_dict(
        signature([ColSpec("integer", "n"), ColSpec("string", "s"), ColSpec("float", "f")])
    )
    records = contract.parse([{"n": 1, "s": "a"}, {"n": 2, "s": "b"}]).records
    frame = to_model_input(records, version)
    assert frame["n"].dtype == np.dtype("int32")
    assert frame["s"].dtype == np.dtype(object)
    # A column nobody sent stays absent: MLflow decides whether this version needs it.
    assert "f" not in frame.columns


def test_a_missing_optional_integer_uses_a_nullable_dtype() -> None:
    version = ModelSignature.from_dict(
        signature([ColSpec("integer", "n", required=False), ColSpec("boolean", "b")])
    )
    frame = to_model_input([{"n": 1, "b": True}, {"b": False}], version)
    assert str(frame["n"].dtype) == "Int32"
    assert frame["b"].dtype == np.dtype(bool)


OUT = Schema([ColSpec("string", "translation_text")])


@pytest.mark.parametrize(
    "prediction",
    [
        pd.DataFrame({"translation_text": ["a", "b"]}),
        pd.Series(["a", "b"]),
        np.array(["a", "b"]),
        ["a", "b"],
        [{"translation_text": "a"}, {"translation_text": "b"}],
        {"translation_text": ["a", "b"]},
    ],
)
def test_predictions_become_records_of_the_output_schema(prediction: Any) -> None:
    assert to_records(prediction, OUT) == [{"translation_text": "a"}, {"translation_text": "b"}]


def test_outputs_without_names_stay_bare_and_values_become_json() -> None:
    assert to_records(np.array([1.5, np.nan]), None) == [1.5, None]
    two = Schema([ColSpec("double", "x"), ColSpec("double", "y")])
    assert to_records(np.array([[1.0, 2.0]]), two) == [{"x": 1.0, "y": 2.0}]
    assert to_records({"label": "cat", "score": np.float32(0.5)}, None) == [
        {"label": "cat", "score": 0.5}
    ]
    assert jsonable({"t": pd.Timestamp("2024-01-01"), "b": b"\x01", "n": np.int64(3)}) == {
        "t": "2024-01-01T00:00:00",
        "b": "AQ==",
        "n": 3,
    }


def test_contracts_are_cached_per_name_and_signature() -> None:
    assert contract_for("translate", TRANSLATE) is contract_for("translate", dict(TRANSLATE))
    assert contract_for("other", TRANSLATE) is not contract_for("translate", TRANSLATE)


def test_frame_outputs_become_the_same_records_as_pandas_would_give() -> None:
    frame = pd.DataFrame(
        {
            "n": [1, 2],
            "x": [0.5, np.nan],
            "maybe": pd.Series([3, None], dtype="Int64"),
            "t": pd.to_datetime(["2024-01-01", "2024-01-02"]),
            "vec": [np.array([1.0, 2.0]), np.array([3.0])],
            "label": ["a", None],
        }
    )
    expected = [jsonable(r) for r in frame.to_dict(orient="records")]
    assert to_records(frame, None) == expected
    assert expected[1] == {
        "n": 2, "x": None, "maybe": None, "t": "2024-01-02T00:00:00", "vec": [3.0], "label": None
    }
    # Repeated column names cannot become dict keys one by one: pandas decides, as before.
    twice = pd.DataFrame([[1, 2]], columns=["a", "a"])
    assert to_records(twice, None) == [jsonable(r) for r in twice.to_dict(orient="records")]

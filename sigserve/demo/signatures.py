"""The demo models' signatures, given explicitly.

An ``input_example`` would let MLflow infer them, but only by running ``predict`` at log time
(loading the model); explicit signatures keep registration cheap and say exactly what the
compatibility check will compare.
"""

from __future__ import annotations

from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Schema

TRANSLATION_OUTPUT = "translation_text"
EMBEDDING_INPUT = "text"
EMBEDDING_OUTPUT = "embedding"


def translation_signature(input_label: str) -> ModelSignature:
    """One required string column in (named by ``input_label``), ``translation_text`` out."""
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, input_label, required=True)]),
        outputs=Schema([ColSpec(DataType.string, TRANSLATION_OUTPUT)]),
    )


def embedding_signature() -> ModelSignature:
    """``text`` (required string) in, ``embedding`` (an array of doubles per row) out."""
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, EMBEDDING_INPUT, required=True)]),
        outputs=Schema([ColSpec(Array(DataType.double), EMBEDDING_OUTPUT)]),
    )

"""How a shadow compares the candidate's answer with the default's (rollout_shadow.agree)."""

from __future__ import annotations

from typing import Any

import pytest

from serving.rollout_shadow import agree
from wire.routing_table import Rollout

ROLLOUT = Rollout(
    id="r", candidate="2", weight=0, shadow=1, rel_tol=1e-3, abs_tol=1e-6, min_cosine=0.99
)


@pytest.mark.parametrize(
    ("ours", "theirs", "agreed"),
    [
        ([{"label": "cat"}], [{"label": "cat"}], True),
        ([{"label": "cat"}], [{"label": "dog"}], False),
        ([{"n": 3}], [{"n": 3}], True),
        ([{"n": 3}], [{"n": 4}], False),
        ([{"ok": True}], [{"ok": 1}], False),  # a bool is not an int
        ([{"x": None}], [{"x": None}], True),
        ([{"x": None}], [{"x": 0}], False),
        ([{"p": 0.5}], [{"p": 0.5004}], True),  # within rel_tol 1e-3
        ([{"p": 0.5}], [{"p": 0.51}], False),
        ([{"p": 0.0}], [{"p": 5e-7}], True),  # within abs_tol
        ([{"p": 1}], [{"p": 1.0000001}], True),  # an int against a float: by tolerance
        ([{"p": float("nan")}], [{"p": float("nan")}], True),
        ([{"a": 1}], [{"a": 1, "b": 2}], False),  # another column
        ([{"a": 1}], [{"a": 1}, {"a": 1}], False),  # another number of rows
    ],
)
def test_scalars_and_records(ours: Any, theirs: Any, agreed: bool) -> None:
    assert agree(ours, theirs, ROLLOUT) is agreed


def test_an_embedding_is_compared_by_cosine() -> None:
    ours = [{"embedding": [0.1, 0.2, 0.3]}]
    close = [{"embedding": [0.1001, 0.2, 0.2999]}]  # cosine 0.9999..., not within rel_tol
    scaled = [{"embedding": [0.2, 0.4, 0.6]}]  # same direction: cosine 1
    apart = [{"embedding": [0.3, 0.2, 0.1]}]  # cosine 0.71
    assert agree(ours, close, ROLLOUT)
    assert agree(ours, scaled, ROLLOUT)
    assert not agree(ours, apart, ROLLOUT)
    assert not agree(ours, [{"embedding": [0.1, 0.2]}], ROLLOUT)
    assert agree([{"e": [0.0, 0.0]}], [{"e": [0.0, 0.0]}], ROLLOUT)
    assert not agree([{"e": [0.0, 0.0]}], [{"e": [0.0, 1e-3]}], ROLLOUT)


def test_rows_of_predictions_are_held_to_the_tolerance_not_a_cosine() -> None:
    # A regressor's answer is rows of floats: [1, 2] and [2, 4] point the same way, and differ.
    assert not agree({"predictions": [1.0, 2.0]}, {"predictions": [2.0, 4.0]}, ROLLOUT)
    assert not agree([1.0, 2.0], [2.0, 4.0], ROLLOUT)
    assert agree({"predictions": [1.0, 2.0]}, {"predictions": [1.0, 2.0000001]}, ROLLOUT)
    # Embeddings as /invocations answers them: rows of vectors.
    assert agree(
        {"predictions": [[0.1, 0.2], [0.3, 0.4]]},
        {"predictions": [[0.2, 0.4], [0.3, 0.4]]},
        ROLLOUT,
    )


def test_the_version_a_v2_answer_names_is_not_compared() -> None:
    ours = {"model_name": "m", "model_version": "1", "outputs": [{"name": "y", "data": ["a"]}]}
    theirs = {**ours, "model_version": "2"}
    assert agree(ours, theirs, ROLLOUT)
    assert not agree(ours, {**theirs, "outputs": [{"name": "y", "data": ["b"]}]}, ROLLOUT)


def test_bytes_are_compared_byte_for_byte() -> None:
    assert agree(b"\x00\x01", b"\x00\x01", ROLLOUT)
    assert not agree(b"\x00\x01", b"\x00\x02", ROLLOUT)

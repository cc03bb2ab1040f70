"""A body that breaks the contract everywhere gets a bounded answer (issue 16): before, 10,000
records of 150 unknown keys each got all 1.5 million errors back, a ~100 MB answer built on the
replica's event loop."""

from __future__ import annotations

from typing import Any

from serving.contract import MAX_LISTED_ERRORS
from tests.unit.test_serving_api import TABLE, start

# What serving/server.py gives the app from its default settings: 16 MiB, 10,000 records.
LIMITS = {"max_body_bytes": 16 * 2**20, "max_records": 10_000}
SMALL_ANSWER = 16 * 1024


def _serve(body: Any) -> tuple[int, dict[str, Any], int]:
    client, backend, _ = start(TABLE, **LIMITS)
    with client:
        r = client.post("/models/echo/serve", json=body)
        assert not backend.calls, "nothing reaches the model"
        return r.status_code, r.json(), len(r.content)


def test_ten_thousand_records_of_150_unknown_keys_get_a_small_answer() -> None:
    record = {"prompt": "x", **{f"a{i}": 0 for i in range(150)}}
    status, problem, size = _serve([record] * 10_000)
    assert status == 422
    assert problem["type"] == "urn:sigserve:problem:invalid-input"
    assert size < SMALL_ANSWER
    assert len(problem["errors"]) == MAX_LISTED_ERRORS
    assert problem["errors"][0] == {"field": "[0].a0", "reason": "is not an input of this model"}
    # The first record alone fills the list: the other 9,999 are not looked at.
    assert "and 147 more" in problem["detail"]
    assert "9,999 records after [0] were not checked" in problem["detail"]


def test_one_error_per_record_lists_the_first_and_says_how_many_went_unchecked() -> None:
    status, problem, size = _serve([{"prompt": 1}] * 10_000)
    assert status == 422 and size < SMALL_ANSWER
    listed = [e["field"] for e in problem["errors"]]
    assert listed == [f"[{i}].prompt" for i in range(MAX_LISTED_ERRORS)]
    last = MAX_LISTED_ERRORS - 1
    assert f"records after [{last}] were not checked" in problem["detail"]
    assert f"{10_000 - MAX_LISTED_ERRORS:,} records" in problem["detail"]


def test_a_few_errors_are_all_listed_and_nothing_is_said_to_be_unchecked() -> None:
    status, problem, _ = _serve([{"prompt": "x"}, {"prompt": 1}, {"prompt": "y", "k": 1}])
    assert status == 422
    assert [e["field"] for e in problem["errors"]] == ["[1].prompt", "[2].k"]
    assert "not checked" not in problem["detail"]

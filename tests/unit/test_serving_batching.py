"""Dynamic batching per version: real asyncio queues and worker threads, models in-process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from serving.batching import Batcher


class Upper:
    """Upper-cases each record; records every call it gets; can hold its first call open."""

    def __init__(self, *, hold_first: bool = False) -> None:
        self.calls: list[tuple[list[Any], dict[str, Any] | None]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, records: list[Any], params: dict[str, Any] | None) -> Sequence[Any]:
        self.calls.append((list(records), params))
        self.started.set()
        self.release.wait(10)
        if "bad" in records:
            raise ValueError("record 'bad' is refused")
        suffix = (params or {}).get("suffix", "")
        return [r.upper() + suffix for r in records]


async def _submit_while_first_predicts(
    batcher: Batcher, model: Upper, requests: list[list[str]], **kw: Any
) -> list[Any]:
    """The first request starts predicting; the others queue behind it; then it is released."""
    first = asyncio.create_task(batcher.predict("m/1@k", requests[0], None, model, **kw))
    await asyncio.to_thread(model.started.wait, 10)
    rest = [
        asyncio.create_task(batcher.predict("m/1@k", r, None, model, **kw)) for r in requests[1:]
    ]
    await asyncio.sleep(0.05)  # let every request reach the queue
    model.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_a_lone_request_is_predicted_at_once_in_one_call() -> None:
    model = Upper()
    batcher = Batcher()
    assert asyncio.run(batcher.predict("m/1@k", ["a", "b"], None, model, max_batch_size=8)) == [
        "A",
        "B",
    ]
    assert model.calls == [(["a", "b"], None)]


def test_requests_queued_behind_a_predict_share_the_next_call_and_get_their_own_rows() -> None:
    model = Upper(hold_first=True)
    requests = [["a"], ["b", "c"], ["d"], ["e", "f", "g"], ["h"]]
    results = asyncio.run(
        _submit_while_first_predicts(Batcher(), model, requests, max_batch_size=32)
    )
    assert results == [["A"], ["B", "C"], ["D"], ["E", "F", "G"], ["H"]]
    # Five requests, two predict calls: the first alone, the four queued behind it together.
    assert [c[0] for c in model.calls] == [["a"], ["b", "c", "d", "e", "f", "g", "h"]]


def test_a_batch_never_exceeds_its_size_and_a_request_is_never_split() -> None:
    model = Upper(hold_first=True)
    requests = [["a"], ["b", "c", "d"], ["e", "f"], ["g", "h", "i", "j", "k"], ["l"]]
    results = asyncio.run(
        _submit_while_first_predicts(Batcher(), model, requests, max_batch_size=4)
    )
    assert results == [[r.upper() for r in req] for req in requests]
    # b-d (3) then e-f would be 5: l (1) fills the batch instead; the 5-record request is larger
    # than any batch, so it goes alone, whole.
    assert [c[0] for c in model.calls] == [
        ["a"],
        ["b", "c", "d", "l"],
        ["e", "f"],
        ["g", "h", "i", "j", "k"],
    ]


def test_one_bad_record_fails_its_own_request_only() -> None:
    model = Upper(hold_first=True)
    results = asyncio.run(
        _submit_while_first_predicts(
            Batcher(), model, [["a"], ["b"], ["bad", "c"], ["d"]], max_batch_size=32
        )
    )
    assert results[0] == ["A"] and results[1] == ["B"] and results[3] == ["D"]
    assert isinstance(results[2], ValueError) and "'bad'" in str(results[2])
    # The batch failed once, then each of its requests was predicted alone.
    assert [c[0] for c in model.calls] == [
        ["a"],
        ["b", "bad", "c", "d"],
        ["b"],
        ["bad", "c"],
        ["d"],
    ]


def test_a_model_that_does_not_answer_one_row_per_record_is_not_cut_up() -> None:
    calls: list[list[Any]] = []

    def count(records: list[Any], params: dict[str, Any] | None) -> Sequence[Any]:
        calls.append(records)
        return [len(records)]  # one summary row, whatever it was given

    async def run() -> list[Any]:
        batcher = Batcher()
        hold = asyncio.Event()

        async def first() -> Any:
            # Keep the queue's task busy so the next three requests queue together.
            return await batcher.predict("m/1@k", ["x"], None, slow_count, max_batch_size=32)

        def slow_count(records: list[Any], params: dict[str, Any] | None) -> Sequence[Any]:
            while not hold.is_set():
                threading.Event().wait(0.01)
            return count(records, params)

        task = asyncio.create_task(first())
        await asyncio.sleep(0.05)
        rest = [
            asyncio.create_task(batcher.predict("m/1@k", r, None, count, max_batch_size=32))
            for r in (["a", "b"], ["c"], ["d", "e", "f"])
        ]
        await asyncio.sleep(0.05)
        hold.set()
        return await asyncio.gather(task, *rest)

    assert asyncio.run(run()) == [[1], [2], [1], [3]]


def test_requests_with_other_params_are_not_batched_together() -> None:
    model = Upper(hold_first=True)

    async def run() -> list[Any]:
        batcher = Batcher()
        first = asyncio.create_task(batcher.predict("m/1@k", ["a"], None, model, max_batch_size=8))
        await asyncio.to_thread(model.started.wait, 10)
        rest = [
            asyncio.create_task(batcher.predict("m/1@k", [r], p, model, max_batch_size=8))
            for r, p in (("b", {"suffix": "!"}), ("c", None), ("d", {"suffix": "!"}))
        ]
        await asyncio.sleep(0.05)
        model.release.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(run()) == [["A"], ["B!"], ["C"], ["D!"]]
    assert sorted(c[0] for c in model.calls[1:]) == [["b", "d"], ["c"]]


def test_versions_are_batched_apart() -> None:
    held, free = Upper(hold_first=True), Upper()

    async def run() -> tuple[list[Any], list[Any]]:
        batcher = Batcher()
        first = asyncio.create_task(batcher.predict("m/1@k", ["a"], None, held, max_batch_size=8))
        await asyncio.to_thread(held.started.wait, 10)
        # Version 2 has its own queue: it answers while version 1 is still predicting.
        other = await batcher.predict("m/2@k", ["b"], None, free, max_batch_size=8)
        assert not first.done()
        held.release.set()
        return await first, other

    assert asyncio.run(run()) == (["A"], ["B"])


@pytest.mark.parametrize("per_model", [False, True])
def test_a_positive_wait_gathers_requests_that_arrive_within_it(per_model: bool) -> None:
    model = Upper()
    wait_s = 0.2  # far longer than the 2 ms between requests, on a machine however busy

    async def run() -> list[Any]:
        # The wait is the batcher's default, or the model's own (its tag, through the table).
        batcher = Batcher() if per_model else Batcher(wait_s=wait_s)
        own = {"wait_s": wait_s} if per_model else {}
        tasks = []
        for r in "abc":
            call = batcher.predict("m/1@k", [r], None, model, max_batch_size=8, **own)
            tasks.append(asyncio.create_task(call))
            await asyncio.sleep(0.002)
        return await asyncio.gather(*tasks)

    assert asyncio.run(run()) == [["A"], ["B"], ["C"]]
    assert [c[0] for c in model.calls] == [["a", "b", "c"]]


def test_without_a_wait_a_full_batch_goes_at_once() -> None:
    model = Upper()

    async def run() -> list[Any]:
        batcher = Batcher(wait_s=30.0)  # a wait that would fail the test if it were waited out
        calls = [batcher.predict("m/1@k", [r, r], None, model, max_batch_size=4) for r in "ab"]
        return await asyncio.wait_for(asyncio.gather(*calls), 10)

    assert asyncio.run(run()) == [["A", "A"], ["B", "B"]]


def test_a_fast_model_is_called_on_the_event_loop_a_slow_one_in_a_thread() -> None:
    threads: list[tuple[str, int]] = []

    def fast(records: list[Any], params: dict[str, Any] | None) -> Sequence[Any]:
        threads.append(("fast", threading.get_ident()))
        return records

    def slow(records: list[Any], params: dict[str, Any] | None) -> Sequence[Any]:
        threads.append(("slow", threading.get_ident()))
        threading.Event().wait(0.05)
        return records

    async def run() -> int:
        batcher = Batcher(inline_below_s=0.02)
        for _ in range(3):
            await batcher.predict("fast/1@k", ["a"], None, fast, max_batch_size=8)
            await batcher.predict("slow/1@k", ["a"], None, slow, max_batch_size=8)
        assert batcher.stats()["fast/1@k"].inline == 2  # the first call had nothing measured
        assert batcher.stats()["slow/1@k"].inline == 0
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    fast_threads = [t for name, t in threads if name == "fast"]
    assert fast_threads[0] != loop_thread and fast_threads[1:] == [loop_thread, loop_thread]
    assert all(t != loop_thread for name, t in threads if name == "slow")


def test_idle_queues_of_versions_long_gone_do_not_pile_up() -> None:
    async def run() -> int:
        batcher = Batcher()
        for n in range(600):
            await batcher.predict(f"m/{n}@k", ["a"], None, Upper(), max_batch_size=8)
        return len(batcher.stats())

    assert asyncio.run(run()) <= 256

"""Dynamic batching per version: real asyncio queues and worker threads, models in-process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from serving.batching import Batcher, Unmergeable, Work
from serving.deadlines import Deadlines
from serving.exceptions import PredictTimeout, VersionWedged


def work(records: list[Any], group: Any = "") -> Work:
    """A request of plain records: one row each, all of one group."""
    return Work(records, len(records), group)


class Upper:
    """Upper-cases each record; records every call it gets; can hold its first call open."""

    def __init__(self, *, hold_first: bool = False) -> None:
        self.calls: list[tuple[list[Any], dict[str, Any] | None]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, parts: list[Any], params: dict[str, Any] | None) -> Sequence[Any]:
        records = [record for part in parts for record in part]
        self.calls.append((records, params))
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
    first = asyncio.create_task(batcher.predict("m/1@k", work(requests[0]), None, model, **kw))
    await asyncio.to_thread(model.started.wait, 10)
    rest = [
        asyncio.create_task(batcher.predict("m/1@k", work(r), None, model, **kw))
        for r in requests[1:]
    ]
    # One turn of the loop runs each new task up to its wait: every request is queued.
    await asyncio.sleep(0)
    model.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_a_lone_request_is_predicted_at_once_in_one_call() -> None:
    model = Upper()
    batcher = Batcher()
    assert asyncio.run(
        batcher.predict("m/1@k", work(["a", "b"]), None, model, max_batch_size=8)
    ) == [
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


def test_a_model_that_does_not_answer_one_row_per_record_is_not_cut_up_nor_batched_again() -> None:
    calls: list[list[Any]] = []
    release, started = threading.Event(), threading.Event()

    def count(parts: list[Any], params: dict[str, Any] | None) -> Sequence[Any]:
        records = [record for part in parts for record in part]
        calls.append(records)
        started.set()
        release.wait(10)
        return [len(records)]  # one summary row, whatever it was given

    async def run() -> list[Any]:
        batcher = Batcher()

        async def queued_behind_a_call(requests: list[list[str]]) -> list[Any]:
            release.clear()
            started.clear()
            first = asyncio.create_task(
                batcher.predict("m/1@k", work(["x"]), None, count, max_batch_size=32)
            )
            await asyncio.to_thread(started.wait, 10)
            rest = [
                asyncio.create_task(
                    batcher.predict("m/1@k", work(r), None, count, max_batch_size=32)
                )
                for r in requests
            ]
            await asyncio.sleep(0)
            release.set()
            return await asyncio.gather(first, *rest)

        answers = await queued_behind_a_call([["a", "b"], ["c"], ["d", "e", "f"]])
        assert calls[1] == ["a", "b", "c", "d", "e", "f"]  # tried together once
        calls.clear()
        return [answers, await queued_behind_a_call([["g"], ["h", "i"]])]

    assert asyncio.run(run()) == [[[1], [2], [1], [3]], [[1], [1], [2]]]
    # The second time, each request went alone at once: the model saw nobody twice.
    assert calls == [["x"], ["g"], ["h", "i"]]


def test_requests_with_other_params_are_not_batched_together() -> None:
    model = Upper(hold_first=True)

    async def run() -> list[Any]:
        batcher = Batcher()
        first = asyncio.create_task(
            batcher.predict("m/1@k", work(["a"]), None, model, max_batch_size=8)
        )
        await asyncio.to_thread(model.started.wait, 10)
        rest = [
            asyncio.create_task(batcher.predict("m/1@k", work([r]), p, model, max_batch_size=8))
            for r, p in (("b", {"suffix": "!"}), ("c", None), ("d", {"suffix": "!"}))
        ]
        await asyncio.sleep(0)
        model.release.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(run()) == [["A"], ["B!"], ["C"], ["D!"]]
    assert sorted(c[0] for c in model.calls[1:]) == [["b", "d"], ["c"]]


def test_versions_are_batched_apart() -> None:
    held, free = Upper(hold_first=True), Upper()

    async def run() -> tuple[list[Any], list[Any]]:
        batcher = Batcher()
        first = asyncio.create_task(
            batcher.predict("m/1@k", work(["a"]), None, held, max_batch_size=8)
        )
        await asyncio.to_thread(held.started.wait, 10)
        # Version 2 has its own queue: it answers while version 1 is still predicting.
        other = await batcher.predict("m/2@k", work(["b"]), None, free, max_batch_size=8)
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
            call = batcher.predict("m/1@k", work([r]), None, model, max_batch_size=8, **own)
            tasks.append(asyncio.create_task(call))
            await asyncio.sleep(0.002)
        return await asyncio.gather(*tasks)

    assert asyncio.run(run()) == [["A"], ["B"], ["C"]]
    assert [c[0] for c in model.calls] == [["a", "b", "c"]]


def test_without_a_wait_a_full_batch_goes_at_once() -> None:
    model = Upper()

    async def run() -> list[Any]:
        batcher = Batcher(wait_s=30.0)  # a wait that would fail the test if it were waited out
        calls = [
            batcher.predict("m/1@k", work([r, r]), None, model, max_batch_size=4) for r in "ab"
        ]
        return await asyncio.wait_for(asyncio.gather(*calls), 10)

    assert asyncio.run(run()) == [["A", "A"], ["B", "B"]]


def test_a_fast_model_is_called_on_the_event_loop_a_slow_one_in_a_thread() -> None:
    threads: list[tuple[str, int]] = []

    def fast(parts: list[Any], params: dict[str, Any] | None) -> Sequence[Any]:
        threads.append(("fast", threading.get_ident()))
        return parts[0]

    def slow(parts: list[Any], params: dict[str, Any] | None) -> Sequence[Any]:
        threads.append(("slow", threading.get_ident()))
        threading.Event().wait(0.05)
        return parts[0]

    async def run() -> int:
        batcher = Batcher(inline_below_s=0.02)
        for _ in range(3):
            await batcher.predict("fast/1@k", work(["a"]), None, fast, max_batch_size=8)
            await batcher.predict("slow/1@k", work(["a"]), None, slow, max_batch_size=8)
        assert batcher.stats()["fast/1@k"].inline == 2  # the first call had nothing measured
        assert batcher.stats()["slow/1@k"].inline == 0
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    fast_threads = [t for name, t in threads if name == "fast"]
    assert fast_threads[0] != loop_thread and fast_threads[1:] == [loop_thread, loop_thread]
    assert all(t != loop_thread for name, t in threads if name == "slow")


def test_a_model_that_answers_from_another_process_is_never_called_on_the_event_loop() -> None:
    # A model served from an environment of its own blocks on a Ray call: however fast it
    # was, the event loop must never wait on it.
    threads: list[int] = []

    def remote(parts: list[Any], params: dict[str, Any] | None) -> Sequence[Any]:
        threads.append(threading.get_ident())
        return parts[0]

    async def run() -> int:
        batcher = Batcher(inline_below_s=1.0)
        for _ in range(3):
            await batcher.predict(
                "env/1@k", work(["a"]), None, remote, max_batch_size=8, may_inline=False
            )
        assert batcher.stats()["env/1@k"].inline == 0
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    assert len(threads) == 3 and loop_thread not in threads


def test_idle_queues_of_versions_long_gone_do_not_pile_up() -> None:
    async def run() -> int:
        batcher = Batcher()
        for n in range(600):
            await batcher.predict(f"m/{n}@k", work(["a"]), None, Upper(), max_batch_size=8)
        return len(batcher.stats())

    assert asyncio.run(run()) <= 256


def test_a_call_too_large_for_the_loop_goes_to_a_thread_however_fast_its_rows() -> None:
    threads: list[tuple[int, int]] = []

    def fast(parts: list[Any], params: dict[str, Any] | None) -> Sequence[Any]:
        threads.append((len(parts[0]), threading.get_ident()))
        return parts[0]

    async def run() -> int:
        batcher = Batcher(inline_below_s=0.05, inline_max_rows=64)
        for size in (1, 1, 64, 65, 1):
            await batcher.predict("m/1@k", work(["a"] * size), None, fast, max_batch_size=100)
        return threading.get_ident()

    loop = asyncio.run(run())
    on_loop = [(size, thread == loop) for size, thread in threads]
    # The first call had nothing measured; then the call's size decides, not the average.
    assert on_loop == [(1, False), (1, True), (64, True), (65, False), (1, True)]


def test_requests_of_other_groups_or_of_no_group_never_share_a_call() -> None:
    model = Upper(hold_first=True)

    async def run() -> list[Any]:
        batcher = Batcher()
        first = asyncio.create_task(
            batcher.predict("m/1@k", work(["a"]), None, model, max_batch_size=8)
        )
        await asyncio.to_thread(model.started.wait, 10)
        rest = [
            asyncio.create_task(
                batcher.predict("m/1@k", work([r], g), None, model, max_batch_size=8)
            )
            for r, g in (("b", "x"), ("c", None), ("d", "y"), ("e", "x"), ("f", None))
        ]
        await asyncio.sleep(0)
        model.release.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(run()) == [["A"], ["B"], ["C"], ["D"], ["E"], ["F"]]
    assert [c[0] for c in model.calls] == [["a"], ["b", "e"], ["c"], ["d"], ["f"]]


def test_parts_that_cannot_merge_go_alone_and_the_model_never_sees_them_twice() -> None:
    seen: list[list[Any]] = []
    release, started = threading.Event(), threading.Event()

    def strict(parts: list[Any], params: dict[str, Any] | None) -> Sequence[Any]:
        if len({len(p) for p in parts}) > 1:
            raise Unmergeable("parts of other lengths")  # before the model is called
        records = [record for part in parts for record in part]
        seen.append(records)
        started.set()
        release.wait(10)
        return records

    async def run() -> tuple[list[Any], int]:
        batcher = Batcher()
        first = asyncio.create_task(
            batcher.predict("m/1@k", work(["a"]), None, strict, max_batch_size=8)
        )
        await asyncio.to_thread(started.wait, 10)
        rest = [
            asyncio.create_task(batcher.predict("m/1@k", work(r), None, strict, max_batch_size=8))
            for r in (["b"], ["c", "d"])
        ]
        await asyncio.sleep(0)
        release.set()
        answers = await asyncio.gather(first, *rest)
        return answers, batcher.stats()["m/1@k"].retried_alone

    assert asyncio.run(run()) == ([["a"], ["b"], ["c", "d"]], 0)
    assert seen == [["a"], ["b"], ["c", "d"]]


def test_a_call_that_hangs_while_a_failed_batch_goes_alone_leaves_the_rest_503() -> None:
    release, started = threading.Event(), threading.Event()
    hold_first = threading.Event()

    def model(parts: list[Any], params: dict[str, Any] | None) -> Sequence[Any]:
        records = [record for part in parts for record in part]
        if records == ["a"]:
            started.set()
            hold_first.wait(10)
        if len(parts) > 1:
            raise ValueError("this batch is refused")
        if records == ["hang"]:
            release.wait(300)  # stands for a call that never returns
        return [r.upper() for r in records]

    async def run() -> list[Any]:
        batcher = Batcher(deadlines=Deadlines())
        kw: dict[str, Any] = {"max_batch_size": 8, "timeout_s": 0.2}
        try:
            first = asyncio.create_task(batcher.predict("m/1@k", work(["a"]), None, model, **kw))
            await asyncio.to_thread(started.wait, 10)
            rest = [
                asyncio.create_task(batcher.predict("m/1@k", work([r]), None, model, **kw))
                for r in ("b", "hang", "c")
            ]
            await asyncio.sleep(0)
            hold_first.set()
            return await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), 10)
        finally:
            release.set()  # before the loop closes: asyncio.run waits for worker threads

    answers = asyncio.run(run())
    assert answers[:2] == [["A"], ["B"]]
    assert isinstance(answers[2], PredictTimeout) and isinstance(answers[3], VersionWedged)

"""Publishes coalesced: asks made during a publish share the next one; a failure fails the asks it
served and leaves the table owed; an ask cut off does not cut off the others' publish."""

from __future__ import annotations

import asyncio

import pytest

from controller.coalescer import PublishCoalescer


class Publishes:
    """A publish seam: each call waits until the test lets it end, then succeeds or raises."""

    def __init__(self) -> None:
        self.started = 0
        self.gates: list[asyncio.Event] = []
        self.fail: list[bool] = []
        self._start = asyncio.Event()

    async def __call__(self) -> None:
        self.started += 1
        self._start.set()
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail and self.fail.pop(0):
            raise RuntimeError("database is locked")

    async def began(self, count: int) -> None:
        async with asyncio.timeout(10):
            while self.started < count:
                self._start.clear()
                await self._start.wait()


def test_asks_made_during_a_publish_are_served_together_by_the_next() -> None:
    publishes = Publishes()
    coalescer = PublishCoalescer(publishes)

    async def go() -> None:
        first = asyncio.create_task(coalescer.publish())
        await publishes.began(1)
        later = [asyncio.create_task(coalescer.publish()) for _ in range(5)]
        await asyncio.sleep(0)  # one turn of the loop: the five tasks run up to their wait
        publishes.gates[0].set()
        await first
        assert not any(t.done() for t in later)  # the first publish began before they asked
        await publishes.began(2)
        publishes.gates[1].set()
        await asyncio.gather(*later)

    asyncio.run(go())
    assert publishes.started == 2 and not coalescer.owed


def test_a_failed_publish_fails_its_asks_and_is_owed_until_one_succeeds() -> None:
    publishes = Publishes()
    publishes.fail = [True, False]
    coalescer = PublishCoalescer(publishes)

    async def go() -> None:
        asks = [asyncio.create_task(coalescer.publish()) for _ in range(2)]
        await publishes.began(1)
        publishes.gates[0].set()
        for ask in asks:
            with pytest.raises(RuntimeError, match="locked"):
                await ask
        assert coalescer.owed
        again = asyncio.create_task(coalescer.publish())
        await publishes.began(2)
        assert coalescer.owed  # not paid until that publish completes
        publishes.gates[1].set()
        await again

    asyncio.run(go())
    assert not coalescer.owed


def test_an_ask_cancelled_does_not_cancel_the_publish_others_wait_for() -> None:
    publishes = Publishes()
    coalescer = PublishCoalescer(publishes)

    async def go() -> None:
        cut, kept = (asyncio.create_task(coalescer.publish()) for _ in range(2))
        await publishes.began(1)
        cut.cancel()
        await asyncio.gather(cut, return_exceptions=True)
        publishes.gates[0].set()
        await kept

    asyncio.run(go())
    assert publishes.started == 1 and not coalescer.owed

"""A hung predict never takes the threads that loads and evictions need (serving.deadlines)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.deadlines import Deadlines
from serving.exceptions import PredictTimeout


def test_hung_predicts_leave_the_default_executor_to_loads() -> None:
    release = threading.Event()

    async def scenario() -> None:
        # asyncio's default executor, where loads (to_thread) and Ray's evictions run, down to
        # one thread: a hung predict there would hold it, and the load below would never run.
        default = ThreadPoolExecutor(max_workers=1)
        asyncio.get_running_loop().set_default_executor(default)
        deadlines = Deadlines(max_wedged=2)
        try:
            for key in ("m/1@0", "m/2@0", "m/3@0"):
                with pytest.raises(PredictTimeout):
                    await deadlines.run(key, 0.05, release.wait)
            assert await asyncio.wait_for(asyncio.to_thread(lambda: "loaded"), 5) == "loaded"
            assert deadlines.wedged == {"m/1@0": 1, "m/2@0": 1, "m/3@0": 1}
        finally:
            release.set()  # else asyncio.run waits for the hung threads at its shutdown

    asyncio.run(scenario())

"""While the resync lists the registry, the worker starts no pass of the resync lane (MLflow
answers the listing, not the full pass's reads of many models), and still takes a webhook's
name at once. The worker, its resync and the reconciler are the real ones (``stack``), on a
fake registry whose listing the test holds until it lets it go."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from tests.unit.test_controller_worker_lanes import WAIT_S, Witness, stack, until


class HeldListing(Witness):
    """Lists ``names``; while ``hold`` is clear the listing waits (``began`` says it did)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.hold, self.began = threading.Event(), threading.Event()
        self.hold.set()

    def model_names(self) -> list[str]:
        self.began.set()
        assert self.hold.wait(WAIT_S), "the test never let the listing go"
        return list(self.names)


def test_the_resync_lane_waits_for_the_listing_and_a_webhook_does_not(tmp_path: Path) -> None:
    worker, passes, _, _, _, _ = stack(tmp_path, concurrency=2)
    registry = HeldListing()
    worker.resync._registry = registry  # the worker's own resync, listing this registry
    registry.names = [f"r{i}" for i in range(3)]

    async def go() -> None:
        run = asyncio.create_task(worker.run())
        for name in registry.names:  # a full pass queued by an earlier resync
            worker.enqueue(name, "resync")
        await until(lambda: len(passes.order) == 3 and passes.in_flight == 0, "the first pass")
        registry.hold.clear()
        registry.began.clear()
        resync = asyncio.create_task(worker.resync.once(full=True))
        await asyncio.to_thread(registry.began.wait, WAIT_S)
        worker.enqueue("r0", "resync")  # the next full pass's names, queued meanwhile
        worker.enqueue("r1", "resync")
        worker.enqueue("w", "webhook:d-1")
        await until(lambda: "w" in passes.order and passes.in_flight == 0, "the webhook's pass")
        await asyncio.sleep(0.05)
        assert passes.order[3:] == ["w"]  # the resync's names wait for the listing
        registry.hold.set()
        # w is stored and not listed: the full pass reads it too (it finds it gone).
        assert await resync == ["r0", "r1", "r2", "w"]
        await until(lambda: {"r0", "r1", "r2", "w"} <= set(passes.order[4:])
                    and passes.in_flight == 0, "the resync lane")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(go())


def test_a_webhook_for_a_model_being_reconciled_does_not_wait_for_the_listing(
    tmp_path: Path,
) -> None:
    """A webhook for a model whose pass runs puts the name in the events lane when that pass
    ends: its second pass starts then, not after the resync's listing."""
    worker, passes, _, _, _, _ = stack(tmp_path, concurrency=3)
    registry = HeldListing()
    worker.resync._registry = registry
    registry.names = ["w"]
    passes.holds["w"] = threading.Event()

    async def go() -> None:
        run = asyncio.create_task(worker.run())
        worker.enqueue("w", "webhook:d-1")
        deadline = time.monotonic() + WAIT_S
        while passes.order != ["w"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        registry.hold.clear()
        registry.began.clear()
        resync = asyncio.create_task(worker.resync.once(full=True))
        assert await asyncio.to_thread(registry.began.wait, WAIT_S)
        # Another webhook's pass starts during the listing (as it should); the worker's loop
        # then waits in _after_listing for the listing or an event's ask.
        worker.enqueue("x", "webhook:d-2")
        deadline = time.monotonic() + WAIT_S
        while "x" not in passes.order:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        worker.enqueue("w", "webhook:d-3")  # a second webhook while w's first pass runs
        await asyncio.sleep(0.05)
        passes.holds["w"].set()  # its first pass ends: w goes back on the events lane
        for _ in range(400):  # up to ~2 s, well under the held listing
            if passes.order.count("w") >= 2:
                break
            await asyncio.sleep(0.005)
        second = passes.order.count("w")
        registry.hold.set()
        await resync
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        assert second == 2, "the webhook's second pass waited for the resync's listing"

    asyncio.run(go())

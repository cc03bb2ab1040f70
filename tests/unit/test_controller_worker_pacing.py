"""While the resync lists the registry, the worker starts no pass of the resync lane (MLflow
answers the listing, not the full pass's reads of many models), and still takes a webhook's
name at once. The worker, its resync and the reconciler are the real ones (``stack``), on a
fake registry whose listing the test holds until it lets it go."""

from __future__ import annotations

import asyncio
import threading
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

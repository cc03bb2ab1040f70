"""The worker's queue of model names: de-duplicated, two lanes, one pass per name at a time.

Shaped like client-go's ``workqueue``: a name is *dirty* from the moment it is asked for until a
pass takes it, and *processing* while that pass runs. A name asked for again while dirty is not
added twice; one asked for while processing is not handed out again (so two passes never
reconcile one model at once) but is remembered and goes back on the queue when its pass is
``done``, so no ask is lost.

Two lanes, taken in order: ``events`` (what a webhook, a retry, an admin command or a follower
asked for) before ``resync`` (what the periodic resync enqueued), each first in, first out. A
name waiting in the resync lane that an event asks for moves to the events lane; an event's name
is never moved back by a resync asking for it too. So a webhook's pass waits at most for the
passes already running, however many names the resync enqueued (docs/architecture.md, "The
worker").
"""

from __future__ import annotations

import asyncio
from typing import Literal

Lane = Literal["events", "resync"]
LANES: tuple[Lane, ...] = ("events", "resync")


class WorkQueue:
    def __init__(self) -> None:
        # Per lane, the names waiting to be taken, oldest first (dicts keep insertion order).
        self._lanes: dict[Lane, dict[str, None]] = {lane: {} for lane in LANES}
        # Asked for and not taken yet: waiting in a lane, or asked for while its pass runs
        # (then the lane it goes back into when that pass is done).
        self._dirty: dict[str, Lane] = {}
        self._processing: set[str] = set()
        self._ready = asyncio.Event()

    def add(self, name: str, lane: Lane) -> None:
        was = self._dirty.get(name)
        if was == "events" or was == lane:
            return  # already asked for, in this lane or a faster one
        self._dirty[name] = lane
        if name in self._processing:
            return  # goes back on the queue when its pass is done
        if was is not None:
            del self._lanes[was][name]  # a resync's name an event asks for: moved up
        self._lanes[lane][name] = None
        self._ready.set()

    async def get(self) -> str:
        """The next name to reconcile, events first; it is processing until ``done``."""
        while True:
            for lane in LANES:
                waiting = self._lanes[lane]
                if waiting:
                    name = next(iter(waiting))
                    del waiting[name]
                    del self._dirty[name]
                    self._processing.add(name)
                    return name
            self._ready.clear()
            await self._ready.wait()

    def done(self, name: str) -> None:
        """``name``'s pass is over: asked for meanwhile, it goes back on the queue."""
        self._processing.discard(name)
        lane = self._dirty.get(name)
        if lane is not None:
            self._lanes[lane][name] = None
            self._ready.set()

    def waiting(self, limit: int) -> list[str]:
        """Up to ``limit`` names waiting in the lanes, the next first. Called from the passes'
        threads too: a lane changed during the copy raises RuntimeError (the caller's to
        take)."""
        found: list[str] = []
        for lane in LANES:
            found += list(self._lanes[lane])[: limit - len(found)]
        return found

    def depth(self, lane: Lane) -> int:
        """Names waiting in ``lane`` (those asked for while processing not counted yet)."""
        return len(self._lanes[lane])

    @property
    def in_flight(self) -> int:
        return len(self._processing)

    def __contains__(self, name: str) -> bool:
        """Whether ``name`` waits to be taken (in a lane or for its pass to end)."""
        return name in self._dirty

"""Loading a model before Ray's multiplexer is asked for it, so a load that has not produced a
model never costs a loaded one.

Ray Serve's ``@serve.multiplexed`` (``ray/serve/multiplex.py``, ``load_model``) evicts the least
recently used model under its lock *before* it calls the loader. Called with a loader that
downloads and loads, a version whose download fails (the artifact store down) or whose pickle is
broken evicts a healthy model on every try, and the evicted one (a default, say) then cannot be
loaded back while the store is down. So the whole load (download, digest check, load) happens
here first, one at a time per replica as before; only a model in hand goes into the multiplexer,
whose loader (``take``) just hands it over. A failed load raises here, before the multiplexer
and its eviction. See ``docs/architecture.md`` ("A load never costs a loaded model").

Chosen over owning the LRU: the multiplexer is also what tells Ray's router which replica holds
which model id (through private calls), which an LRU of our own would have to redo. The price is
the same either way: while a new model loads, the replica holds one model more than its limit.

Ray's LRU is not ours to read, so which models it holds is kept here: added when ``take`` hands
a model over, removed when the multiplexer evicts it (``evicted``, from the model's ``__del__``).
In the moment between Ray's eviction and that call, a request for the evicted id reaches the
multiplexer with nothing loaded ahead; ``take`` then loads it in place, as Ray would (the one
case where a failed load could still evict; it needs an eviction and a request for the evicted
model within a thread hop of each other).

A request for a model the multiplexer holds takes it from that map, without calling the
multiplexer (Ray's call cost ~4% of a replica's time at 16 connections, most of it the
``Counter`` it increments per call; docs/benchmarks.md). What the multiplexer must still see,
it sees: every load (it evicts to its limit and tells Ray's router which ids the replica holds
or loads), and the order of use: ids are kept in the order requests used them, and before a
call that may evict, the held ids are asked of the multiplexer in that order, so it evicts the
one these requests used least recently, as it would have. Evictions happen only inside a
multiplexer call, so while one is under way no request takes the map's word for a model: an
evicted model is never answered from it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from serving.exceptions import ModelUnavailable
from serving.failed_loads import again
from serving.loader import LoadedModel
from serving.model_ids import Artifact

logger = logging.getLogger(__name__)

# ``PyfuncLoader.load``, or anything of its shape: (model id, artifact, confirm) -> a model.
Load = Callable[[str, Artifact, bool], Awaitable[LoadedModel]]
# The multiplexed getter: a model id -> the model, from the LRU or from ``take``.
Lru = Callable[[str], Awaitable[LoadedModel]]


@dataclass
class _Wanted:
    artifact: Artifact
    confirm: bool
    requests: int = 0


class LoadAhead:
    def __init__(self, load: Load, lru: Lru) -> None:
        self._load = load
        self._lru = lru
        # One load at a time, as Ray's multiplexer did: loads race for memory and the disk.
        self._one_at_a_time = asyncio.Lock()
        self._loading: dict[str, asyncio.Task[None]] = {}
        # Loaded, not yet handed to the multiplexer.
        self._staged: dict[str, LoadedModel] = {}
        # Ids with requests waiting for them, and what they are bound to.
        self._wanted: dict[str, _Wanted] = {}
        # The models the multiplexer holds, as far as ``take`` and ``evicted`` tell, the one a
        # request used last, last. Ray may evict from a worker thread: changed under a lock.
        self._resident: OrderedDict[str, LoadedModel] = OrderedDict()
        self._resident_lock = threading.Lock()
        # Multiplexer calls under way: while any is, a model may be being evicted.
        self._in_lru = 0

    @property
    def resident(self) -> set[str]:
        with self._resident_lock:
            return set(self._resident)

    async def model(self, value: str, artifact: Artifact, *, confirm: bool = False) -> LoadedModel:
        """The model of ``value``: from the held models if the multiplexer holds it, else loaded
        first and then asked of the multiplexer. ``confirm`` as in ``PyfuncLoader.load`` (set
        for a default)."""
        if not self._in_lru:
            with self._resident_lock:
                held = self._resident.get(value)
                if held is not None:
                    self._resident.move_to_end(value)
            if held is not None:
                return held
        wanted = self._wanted.setdefault(value, _Wanted(artifact, confirm))
        wanted.requests += 1
        try:
            if value not in self._resident and value not in self._staged:
                await self._stage(value, artifact, confirm)
            return await self._from_lru(value)
        finally:
            wanted.requests -= 1
            if wanted.requests == 0:
                del self._wanted[value]
                # Nobody left to take it (the requests were cancelled): not kept in memory.
                self._staged.pop(value, None)

    async def take(self, value: str) -> LoadedModel:
        """The multiplexer's loader: hand over the model loaded ahead for ``value``."""
        loaded = self._staged.pop(value, None)
        if loaded is None:
            # Evicted a moment ago while a request for it was on its way (see the docstring).
            wanted = self._wanted.get(value)
            if wanted is None:
                raise ModelUnavailable(f"nothing was loaded for the model id {value!r}")
            logger.info("%s was evicted as it was asked for; loading it in place", value)
            loaded = await self._load(value, wanted.artifact, wanted.confirm)
        with self._resident_lock:
            self._resident[value] = loaded
        return loaded

    async def keep(self, value: str, artifact: Artifact, loaded: LoadedModel, limit: int) -> bool:
        """Hand ``loaded``, a model of ``value`` loaded beside the multiplexer (a proof's), to
        the multiplexer if that costs no loaded model; say whether it took it.

        ``limit`` is the multiplexer's: the models it holds, the ones staged for it and the
        loads under way for it all count, and the check and the hand-over happen under the
        one-load-at-a-time lock, so no load can fill the slot in between and have Ray evict.
        """
        async with self._one_at_a_time:
            with self._resident_lock:
                held = set(self._resident)
            coming = set(self._staged) | set(self._loading)
            if value in held or value in coming or len(held | coming) >= limit:
                return False
            wanted = self._wanted.setdefault(value, _Wanted(artifact, False))
            wanted.requests += 1
            self._staged[value] = loaded
            try:
                await self._from_lru(value)
            finally:
                wanted.requests -= 1
                if wanted.requests == 0:
                    del self._wanted[value]
                    self._staged.pop(value, None)
            return True

    def evicted(self, value: str) -> None:
        """The multiplexer evicted ``value`` (called from the model's ``__del__``, in a thread)."""
        with self._resident_lock:
            self._resident.pop(value, None)

    async def _from_lru(self, value: str) -> LoadedModel:
        """Ask the multiplexer for ``value``, having told it the order the held models were
        used in since, so that a load evicts the least recently used (see the docstring).

        The calls run in a task of their own, counted in ``_in_lru`` until that task ends: a
        request cancelled while Ray awaits an evicted model's ``__del__`` in a thread must not
        end the count before ``evicted`` ran, or the map would answer the evicted model."""
        self._in_lru += 1
        # A load may evict. Told only when no other call is under way: one could be evicting
        # a held model, whose call would then be a load (the order is then as Ray saw it).
        replay = value not in self._resident and self._in_lru == 1
        task = asyncio.get_running_loop().create_task(self._lru_calls(value, replay))
        task.add_done_callback(self._lru_ended)
        return await asyncio.shield(task)

    async def _lru_calls(self, value: str, replay: bool) -> LoadedModel:
        if replay:
            with self._resident_lock:
                order = list(self._resident)
            for held in order:
                # Held, so a hit: moved to the multiplexer's end, nothing loaded or evicted.
                await self._lru(held)
        loaded = await self._lru(value)
        with self._resident_lock:
            if value in self._resident:  # used now, in this order as in the multiplexer's
                self._resident.move_to_end(value)
        return loaded

    def _lru_ended(self, task: asyncio.Task[LoadedModel]) -> None:
        self._in_lru -= 1
        # Retrieved even when its request gave up (``take``'s "nothing was loaded", say), so
        # asyncio does not log it.
        if not task.cancelled():
            task.exception()

    async def _stage(self, value: str, artifact: Artifact, confirm: bool) -> None:
        task = self._loading.get(value)
        if task is None:
            # A task of its own: a request that gives up does not cancel the load that the
            # other requests for the same model wait for.
            task = asyncio.get_running_loop().create_task(self._load_one(value, artifact, confirm))
            self._loading[value] = task
            # Retrieved even when every request for it gave up, so asyncio does not log it.
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            await asyncio.shield(task)
        except ModelUnavailable as error:
            # Each request its own exception (a shared one would share its traceback).
            raise again(error) from None

    async def _load_one(self, value: str, artifact: Artifact, confirm: bool) -> None:
        try:
            async with self._one_at_a_time:
                loaded = await self._load(value, artifact, confirm)
            if value in self._wanted:
                self._staged[value] = loaded
        finally:
            del self._loading[value]

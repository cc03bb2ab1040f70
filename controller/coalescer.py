"""Publishes coalesced: one routing table for every decision committed since the last began.

Passes running side by side each commit decisions and need serving to have them before they
write their verdict back to the registry. One table carries them all: a pass asks
(``PublishCoalescer.publish``) and waits for a publish that *began after its ask*, so whatever it
committed before asking is in that table. At most one publish runs at a time; asks that arrive
while it runs are served together by the next one. A publish that fails fails every ask it
served, and leaves the table owed (``owed``) until one succeeds.

Each publish's log line (``Publisher.publish``) carries the trail of what asked for it: the
asker's own context when one asked alone (the pass's model, actor and delivery ids, or the admin
change's), else the delivery ids of all of them.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from wire.logs import trail


@dataclass
class _Batch:
    """The asks one publish serves, and what they wait on."""

    done: asyncio.Future[None]
    contexts: list[contextvars.Context] = field(default_factory=list)
    deliveries: list[str] = field(default_factory=list)


class PublishCoalescer:
    def __init__(self, publish: Callable[[], Awaitable[object]]) -> None:
        self._publish = publish
        # The asks the next publish serves; None while nobody waits for one not yet begun.
        self._next: _Batch | None = None
        self._driver: asyncio.Task[None] | None = None
        # A publish failed (or was cut off) and none has succeeded since: the table may lag
        # the database, so the next pass publishes even if it changed nothing.
        self.owed = False

    async def publish(self, deliveries: list[str] | None = None) -> None:
        """Return once a publish that began after this call has completed (or raise its error).

        ``deliveries``: the webhook deliveries whose decisions the publish carries (its log).
        """
        batch = self._next
        if batch is None:
            batch = self._next = _Batch(asyncio.get_running_loop().create_future())
        batch.contexts.append(contextvars.copy_context())
        batch.deliveries += [d for d in deliveries or [] if d not in batch.deliveries]
        if self._driver is None or self._driver.done():
            # A context of its own: the asker's trail must not stick to every later publish.
            self._driver = asyncio.create_task(self._drive(), context=contextvars.Context())
        # Shielded: an asker cancelled (its pass cut off) must not cancel the others' publish.
        await asyncio.shield(batch.done)

    async def _drive(self) -> None:
        while self._next is not None:
            batch, self._next = self._next, None
            self.owed = True
            try:
                if len(batch.contexts) == 1:
                    await asyncio.create_task(self._publish_once(), context=batch.contexts[0])
                else:
                    with trail(delivery_ids=batch.deliveries):
                        await self._publish()
            except asyncio.CancelledError:
                for cut in (batch, self._next):
                    if cut is not None:
                        cut.done.cancel()
                self._next = None
                raise
            except Exception as exc:
                batch.done.set_exception(exc)
                batch.done.exception()  # retrieved: asks cancelled meanwhile never read it
                continue
            self.owed = False
            batch.done.set_result(None)

    async def _publish_once(self) -> None:
        await self._publish()

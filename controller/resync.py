"""What fills the worker's queue besides webhooks: the periodic resync and followers' requests.

The resync is the controller pattern's safety net for what a lost webhook (or a deletion,
which fires none) left undone. It costs one paged listing of the registry, not a pass over
every model: each model's fingerprint in the listing (``controller/registry_listing.py``) is
compared with the one the listing showed before that model's last pass that ended well, and
only a model whose fingerprint moved, that was never seen, whose last pass failed, or whose
listing does not show the controller's own writes made since the last one is enqueued; a
stored model the listing lacks is enqueued until its pass makes it a tombstone,
and a tombstone the listing lacks is not enqueued again. What the listing cannot show waits
for the full pass, every ``full_interval_s`` and first whenever the loop starts (at start and
on taking the lead), which enqueues every model the registry or the database knows. The
guarantees and what the listing shows: docs/architecture.md, "What the resync sees".

It also prunes what is kept for a while only: the webhook delivery ids (a day: MLflow retries
a delivery for seconds) and the audit log (its retention). With several controllers on one
PostgreSQL, the leader also takes what followers were asked to reconcile
(``reconcile_requests``) into its queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from controller.exceptions import RegistryUnavailable
from controller.own_writes import ALIAS_CREATED, TAG_SET, Write
from controller.registry import RegistryPort
from controller.registry_listing import ModelFingerprint
from controller.store import Store

log = logging.getLogger(__name__)
DELIVERY_MEMORY = timedelta(days=1)


class Resync:
    def __init__(
        self,
        registry: RegistryPort,
        store: Store,
        enqueue: Callable[[str, str], None],
        *,
        interval_s: float,
        audit_retention: timedelta,
        full_interval_s: float = 600.0,
        write_back: Callable[[str], None] = lambda name: None,
        on_full: Callable[[], None] = lambda: None,
        own_writes: Callable[[str], list[Write]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The controller's own tag and alias writes to a model that went through since asked
        # last (``OwnWrites.take_made``): a fingerprint they alone moved is not a change.
        self._own_writes = own_writes
        self._write_back = write_back
        # Told before a full resync hands the lane what is behind: what the registry refused
        # for good is tried again then (controller/write_back_lane.py).
        self._on_full = on_full
        self._full_interval_s = full_interval_s
        self._registry = registry
        self._store = store
        self._enqueue = enqueue
        self._interval_s = interval_s
        self._audit_retention = audit_retention
        self._clock = clock
        # The fingerprint each listed model had before its last pass that ended well.
        self._seen: dict[str, ModelFingerprint] = {}
        # What the latest listing that enqueued a model showed: what its pass will have read
        # at least (the pass begins after the listing), so what ``passed`` may record.
        self._listed: dict[str, ModelFingerprint] = {}
        self._last_full: float | None = None
        # Set while no listing runs: the worker starts no pass of the resync lane during one
        # (``Worker._after_listing``), so MLflow answers the listing, not the full pass's reads.
        self.not_listing = asyncio.Event()
        self.not_listing.set()
        self._listings = 0

    def passed(self, name: str) -> None:
        """The worker committed a pass over ``name`` (what it read is decided).

        Records the fingerprint the listing showed before the pass was asked for, never a
        later one: a model that changed meanwhile was read as it is now and is merely enqueued
        once more by the next resync. A pass that began before that listing (the name was
        enqueued again while it ran) is followed by one the worker runs after it, whose end
        is reported too.
        """
        listed = self._listed.pop(name, None)
        if listed is not None:
            self._seen[name] = listed

    def failed(self, name: str) -> None:
        """A pass over ``name`` failed or left something to retry: the next resync must
        enqueue it whatever the registry's listing says."""
        self._seen.pop(name, None)

    async def once(self, *, full: bool | None = True) -> list[str] | None:
        """Enqueue what the registry or the database holds that needs a pass; prune old records.

        ``full``: every model the registry or the database knows (what priming and an
        operator's resync ask for); False: only what changed since its last pass (the module's
        docstring); None: full when one is due (``full_due``, asked once listed). The names
        enqueued, sorted (what priming waits for, ``Worker.prime``); None when the registry
        could not be listed.
        """
        started = time.monotonic()
        self._listings += 1
        self.not_listing.clear()
        try:
            listing = await asyncio.to_thread(self._list)
        except RegistryUnavailable as exc:
            log.warning("resync: registry unavailable (%s)", exc)
            return None
        finally:
            self._listings -= 1
            if not self._listings:
                self.not_listing.set()
        listed_s = time.monotonic() - started
        if full is None:
            full = self.full_due()
        listed_at = self._clock()
        stored = await asyncio.to_thread(self._store.stored_names)
        await asyncio.to_thread(self._store.prune_deliveries, DELIVERY_MEMORY)
        await asyncio.to_thread(self._store.prune_events, self._audit_retention)
        seen = self._seen
        # What is no longer listed is forgotten: a model created again under its name is new.
        for gone in seen.keys() - listing.keys():
            del seen[gone]
        for gone in self._listed.keys() - listing.keys():
            del self._listed[gone]
        # The writes made since the last listing, taken for every listed model at every resync
        # (moved or not): a write kept past a listing that did not need it could later excuse
        # a person's move to the same value whose webhook was lost. A listing that does not
        # show a write taken with it enqueues the model: a person may have undone the write
        # before the listing (their webhook lost; the listing equals the one recorded), or
        # the write landed after the listing read the model, which only a pass can tell apart.
        made = (
            {name: self._own_writes(name) for name in listing}
            if self._own_writes is not None
            else {}
        )
        due: list[str] = []
        own = 0
        for name, print_ in listing.items():
            writes = made.get(name)
            if (
                full
                or print_ is None
                or seen.get(name) != print_
                or (writes and after_writes(print_, writes) != print_)
            ):
                if (
                    not full
                    and print_ is not None
                    and _moved_by_own_writes(seen.get(name), writes or [], print_)
                ):
                    seen[name] = print_
                    own += 1
                    continue
                if print_ is not None:
                    self._listed[name] = print_
                due.append(name)
        # Stored but not listed: deleted from the registry (no webhook says so); its pass
        # makes it a tombstone, which is not read again but at the full pass.
        due += [n for n, buried in stored.items() if n not in listing and (full or not buried)]
        due.sort()
        for name in due:
            self._enqueue(name, "resync")
        # Decisions the registry was not told of yet (a restart, a step-down, a failed write):
        # the write-back lane's work derives from the store, not from its memory.
        if full:
            self._on_full()
        behind = await asyncio.to_thread(self._store.behind_write_back)
        for name in behind:
            self._write_back(name)
        if full:
            self._last_full = listed_at
        log.info(
            "resync%s: %d models listed in %.1f s, %d enqueued, %d moved by the controller's "
            "own writes only, %d behind the write-back; %.1f s in all",
            " (full)" if full else "", len(listing), listed_s, len(due), own, len(behind),
            time.monotonic() - started,
            extra={"event": "resync", "full": full, "listed": len(listing),
                   "listed_s": round(listed_s, 2), "enqueued": len(due), "own_writes": own,
                   "behind_write_back": len(behind),
                   "took_s": round(time.monotonic() - started, 2)},
        )  # fmt: skip
        return due

    def _list(self) -> dict[str, ModelFingerprint | None]:
        listing = getattr(self._registry, "listing", None)
        if listing is None:
            # A registry port that lists names only (the worker tests' fakes): nothing to
            # compare, so every listed model is enqueued at every resync.
            return dict.fromkeys(self._registry.model_names())
        prints: dict[str, ModelFingerprint | None] = listing()
        return prints

    def full_due(self) -> bool:
        """Whether a full pass is due: none yet, or ``full_interval_s`` since the last one."""
        return self._last_full is None or self._clock() - self._last_full >= self._full_interval_s

    async def run(self) -> None:
        # Full first: a controller that starts, or takes the lead, cannot tell what was left
        # undone before it (a predecessor's queue, changes the listing does not show).
        self._last_full = None
        while True:
            try:
                await self.once(full=None)
            except Exception:
                log.exception("resync failed; trying again in %.0fs", self._interval_s)
            await asyncio.sleep(self._interval_s)

    async def take_requests(self) -> int:
        """Enqueue what followers were asked to reconcile; how many names."""
        taken = await asyncio.to_thread(self._store.take_reconcile_requests)
        for name, actor in taken:
            self._enqueue(name, actor)
        return len(taken)

    async def take_requests_loop(self, every_s: float) -> None:
        failing = False
        while True:
            try:
                await self.take_requests()
                failing = False
            except Exception as exc:
                # Temporary (the database): the requests stay in their table for the next try.
                if not failing:
                    log.warning("taking followers' reconcile requests failed (%s)", exc)
                failing = True
            await asyncio.sleep(every_s)


def after_writes(print_: ModelFingerprint, writes: list[Write]) -> ModelFingerprint:
    """``print_`` as the listing shows it once ``writes`` (``controller.own_writes``) landed:
    an alias moves among the model's aliases, a version tag among the tags of a listed latest
    version (MLflow moves no timestamp for either)."""
    aliases = dict(print_.aliases)
    tags: dict[str, dict[str, str]] = {}
    for write in writes:
        if write[0] == ALIAS_CREATED:
            _, _, alias, version = write
            aliases[alias] = version
        elif write[0] == TAG_SET:
            _, _, version, key, value = write
            tags.setdefault(version, {})[key] = value
    latest = tuple(
        replace(v, tags=tuple(sorted({**dict(v.tags), **tags[v.version]}.items())))
        if v.version in tags else v
        for v in print_.latest
    )  # fmt: skip
    return replace(print_, aliases=tuple(sorted(aliases.items())), latest=latest)


def _moved_by_own_writes(
    before: ModelFingerprint | None, writes: list[Write], listed: ModelFingerprint
) -> bool:
    """Whether ``listed`` is ``before`` with the controller's own ``writes`` (made since the
    last listing) applied, and nothing else: what a pass would read then is what the
    write-back wrote from that pass's decision, so it would find nothing to do."""
    return before is not None and bool(writes) and after_writes(before, writes) == listed

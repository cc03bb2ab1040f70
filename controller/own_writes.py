"""The controller's own registry writes, remembered so that their webhooks are not work again.

Every verdict tag and alias move the controller writes (``controller.registry_sync``) comes back
from MLflow as a webhook; reconciling the model for it would find nothing to do, at the cost of
two or more registry reads per write. So each write is remembered *before* it is made (a fast
delivery can arrive before the write call returns), and the one delivery whose event and data
match it is acknowledged without a reconcile (``controller.webhooks``). The guarantee, and why
recognising can only ever err toward doing work, is stated in docs/architecture.md ("Where data
scientists look: the MLflow registry").

The writes that went through are also kept per model (the latest value per tag or alias) for
the resync (``controller/resync.py``): the listing shows the alias and the newest version's tags,
so a model written back would otherwise be reconciled once more at the next resync, for nothing
(issue 20: 10,000 such passes after a registry of 10,000 models was primed). A listing that
shows exactly what the model was seen with plus those writes is not a change.

The memory is bounded both ways: an entry lives ``ttl_s`` (far longer than MLflow's delivery
retries, which span seconds) and at most ``max_entries`` are kept, the least recently written
forgotten first. A forgotten entry costs one reconcile that writes nothing, never a missed one.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from controller.registry import RegistryWriter
from controller.registry_writes import direct

TAG_SET = "model_version_tag.set"
ALIAS_CREATED = "model_version_alias.created"
# MLflow retries a delivery 3 times, 1-4 s apart, each waiting up to 30 s for an answer (about
# two minutes at the very worst); a storm queues deliveries behind its 10 delivery threads.
DEFAULT_TTL_S = 300.0
# A few hundred bytes each: ~10 MB at most, while a storm of 1,000 versions leaves ~7,000
# writes whose deliveries may still be on their way.
DEFAULT_MAX_ENTRIES = 20_000

# The delivery's event and the data that identify the write: (event, model, *what was set).
Write = tuple[str, ...]


def tag_set(name: str, version: str, key: str, value: str) -> Write:
    """``model_version_tag.set`` with data {name, version, key, value}."""
    return (TAG_SET, name, version, key, value)


def alias_set(name: str, alias: str, version: str) -> Write:
    """``model_version_alias.created`` with data {name, alias, version} (also sent when an
    alias that exists is moved)."""
    return (ALIAS_CREATED, name, alias, version)


class OwnWrites:
    """Writes on their way to coming back as webhooks; safe to share between threads (the
    write-back runs on the worker's threads, deliveries are checked on the event loop)."""

    def __init__(
        self,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        # Per write: how many of its deliveries are still expected, and until when. The same
        # write made twice before its first delivery came back is expected twice.
        self._entries: OrderedDict[Write, tuple[int, float]] = OrderedDict()
        # Per model, the writes that went through and the resync has not looked at yet
        # (``made``, ``take_made``): the latest value per tag or alias, least recent model first.
        self._made: OrderedDict[str, dict[tuple[str, ...], Write]] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def remember(self, write: Write) -> None:
        """Call before making ``write``: its delivery may arrive before the call returns."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            count, _ = self._entries.pop(write, (0, 0.0))
            self._entries[write] = (count + 1, now + self._ttl_s)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def forget(self, write: Write) -> None:
        """The write failed: no delivery is owed for it (if it went through all the same, its
        delivery is reconciled like anyone's, which finds nothing to write)."""
        with self._lock:
            self._take(write)

    def consume(self, write: Write) -> bool:
        """Whether a delivery of ``write`` is one of the controller's own; each remembered
        write explains one delivery."""
        with self._lock:
            self._expire(self._clock())
            return self._take(write)

    def made(self, write: Write) -> None:
        """``write`` went through: the resync's listing will show it (``take_made``)."""
        event, name, *what = write
        # A tag's or an alias's latest value replaces the one written before it.
        slot = (event, *what[:-1])
        with self._lock:
            writes = self._made.pop(name, {})
            writes[slot] = write
            self._made[name] = writes
            while len(self._made) > self._max_entries:
                self._made.popitem(last=False)

    def take_made(self, name: str) -> list[Write]:
        """The writes to ``name`` that went through since the last call, forgotten here. A
        forgotten one costs the resync one pass of the model, never a missed one."""
        with self._lock:
            return list(self._made.pop(name, {}).values())

    def _take(self, write: Write) -> bool:
        entry = self._entries.get(write)
        if entry is None:
            return False
        count, expires = entry
        if count > 1:
            self._entries[write] = (count - 1, expires)
        else:
            del self._entries[write]
        return True

    def _expire(self, now: float) -> None:
        # Oldest write first (re-remembering moves a write to the end), so the expired ones
        # are a prefix.
        while self._entries:
            write, (_, expires) = next(iter(self._entries.items()))
            if expires > now:
                return
            del self._entries[write]


class RememberingWriter:
    """A ``RegistryWriter`` that remembers each write in ``memory`` just before making it."""

    def __init__(self, writer: RegistryWriter, memory: OwnWrites) -> None:
        # One request per write, not two (``controller.registry_writes``).
        self._writer = direct(writer)
        self._memory = memory

    @property
    def memory(self) -> OwnWrites:
        return self._memory

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        write = tag_set(name, version, key, value)
        self._memory.remember(write)
        try:
            self._writer.set_version_tag(name, version, key, value)
        except BaseException:
            self._memory.forget(write)
            raise
        self._memory.made(write)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        write = alias_set(name, alias, version)
        self._memory.remember(write)
        try:
            self._writer.set_alias(name, alias, version)
        except BaseException:
            self._memory.forget(write)
            raise
        self._memory.made(write)

"""The store's part for routing tables: publish, catch up, load what another controller published.

Mixed into ``Store`` (``controller/store.py``), each public method one transaction.

**Incremental publish.** A full build reads every decision (4.6-5.6 s at 10,000 versions). A
publish instead reads each model's generation (one small query; every write to a model moves
it, ``Store.update_model``) and the rollouts under way, and rebuilds only the entries of the
models whose generation or rollout moved since the table it built last; the content digest is
assembled from a cached JSON fragment per model, byte for byte what ``content_digest`` hashes
(tests/unit/test_controller_store_tables.py checks both against a full rebuild). What is cached
is this process's: the first publish, a publish after the epoch changed, and one every
``full_every_s`` build in full, the safety net against anything the generations did not show.
A full build is made outside the write lock the decisions' commits take (``_build_apart``), and
keeps the entries it made equal to the ones built before; the publish under the lock then
rebuilds what was written meanwhile.

**A database that went back.** Restored from a backup under a running controller, the
database keeps its epoch but counts again from a lower revision, and may name a revision this
controller answered with other content. Replicas take only a higher revision, so the next
publish goes above the highest revision this process published or loaded of that epoch (with
the decisions the database holds), and says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from controller.records import ModelRecord
from controller.rollout_rows import rollouts_under_way
from controller.rows import to_record
from controller.schema import RegisteredModelRow, TableRevisionRow
from controller.table_builder import around_models, build_table, content_digest
from wire.routing_table import ModelEntry, Rollout, RoutingTable

log = logging.getLogger(__name__)
# The revision column holds 2**63 - 1 (BIGINT). A catch-up never takes the revision past this,
# so 2**62 publishes still fit above the highest revision any claim can cause.
REVISION_CEILING = 2**62
# How far one catch-up may move the revision: a restore loses the publishes made since the
# backup (one per decision), far fewer than this; a replica further ahead takes a few polls.
MAX_CATCH_UP = 1_000_000
# How often a publish rebuilds the whole table however little the generations say changed.
FULL_EVERY_S = 600.0
# Names per ``IN (...)``: well under SQLite's bound on host parameters.
_CHUNK = 500


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Built:
    """The last table this process built: per model, the generation it was built from, its
    entry and the entry's JSON as ``content_digest`` writes it."""

    epoch: str
    # Per model, its generation and last write's time as read (a model deleted and stored
    # again starts at generation 1 again).
    generations: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    rollouts: dict[str, Rollout] = field(default_factory=dict)
    entries: dict[str, ModelEntry] = field(default_factory=dict)
    fragments: dict[str, str] = field(default_factory=dict)
    built_at: float = 0.0


class TableRevisions:
    """Publishing and loading routing tables (see the module docstring)."""

    _write_lock: threading.RLock
    _transaction: Callable[[], AbstractContextManager[Session]]
    _all_records: Callable[[Session], list[ModelRecord]]
    _built: _Built | None = None
    # The highest (epoch, revision, digest) of a table this process published or loaded: the
    # revision row of that epoch is never below it, nor at it with another digest, unless the
    # database went back (the module docstring).
    _answered: tuple[str, int, str] | None = None
    full_every_s: float = FULL_EVERY_S
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def has_published(self) -> bool:
        """Whether this database ever published a table (so holds decisions to serve)."""
        with self._transaction() as session:
            return session.get(TableRevisionRow, 1) is not None

    def published(self) -> tuple[str, int] | None:
        """(epoch, revision) of the last table published: one small row, to poll."""
        with self._transaction() as session:
            row = session.get(TableRevisionRow, 1)
            return (row.epoch, row.revision) if row else None

    def published_table(self) -> RoutingTable | None:
        """The last table published, rebuilt from the decisions; None if they moved since.

        Decisions committed but not yet published would make another table under the same
        revision: a follower must never answer one revision with two contents, so it waits for
        the publish that follows every commit. Built as a publish is, from what moved since the
        table this process built last (the write lock guards that cache; a full build is made
        apart first, as a publish's).
        """
        if self._full_due():
            self._build_apart()
        with self._write_lock:
            with self._transaction() as session:
                current = session.get(TableRevisionRow, 1)
                if current is None:
                    return None
                built = self._build(session, current.epoch, full=False)
                if built_digest(built) != current.digest:
                    return None
                answered = _answered(current)
                table = RoutingTable(
                    revision=current.revision, epoch=current.epoch, models=dict(built.entries)
                )
            self._answer(answered)
            return table

    def catch_up(self, seen_revision: int, max_jump: int = MAX_CATCH_UP) -> RoutingTable:
        """Publish the current decisions above a revision serving already saw, within bounds.

        A database restored from a backup keeps its epoch but counts from a lower revision;
        replicas would ignore it until it caught up. A replica that asks from a higher revision
        of this epoch is how the controller learns that, and this puts it ahead: to
        ``seen_revision + 1``, but never more than ``max_jump`` above the stored revision nor
        past ``REVISION_CEILING``. A replica further ahead is caught up by its next polls, one
        bounded jump each; a claim that is not true (a stolen serving token) cannot take the
        revision to where no later table fits (docs/security.md, "The routing-table long-poll").
        """
        with self._write_lock:
            table, answered = self._catch_up(seen_revision, max_jump)
            self._answer(answered)
            return table

    def _catch_up(
        self, seen_revision: int, max_jump: int
    ) -> tuple[RoutingTable, tuple[str, int, str]]:
        with self._transaction() as session:
            current = session.get(TableRevisionRow, 1, with_for_update=True)
            assert current is not None, "catch_up after a first publish"
            models = self._all_records(session)
            rollouts = rollouts_under_way(session)
            digest = content_digest(
                build_table(models, revision=0, epoch=current.epoch, rollouts=rollouts)
            )
            wanted = min(seen_revision + 1, current.revision + max_jump, REVISION_CEILING)
            revision = max(current.revision, wanted)
            above = self._went_back(current)
            if above is not None:
                revision = max(revision, above + 1)
            # A revision names one content: decisions committed since the last publish get a
            # revision of their own, and the row records what the revision it names carries.
            if current.digest != digest:
                revision = max(revision, current.revision + 1)
            if revision != current.revision:
                current.revision = revision
                current.digest = digest
                current.published_at = _now()
            table = build_table(
                models, revision=current.revision, epoch=current.epoch, rollouts=rollouts
            )
            return table, _answered(current)

    def publish(self, *, full: bool = False) -> RoutingTable:
        """Build the table from the decisions; bump the revision only if its content changed.

        Under the write lock and the revision row's lock: two publishes racing would both read
        revision N and write N+1 for different tables, and replicas would keep whichever they
        saw first. ``full``: rebuild every entry (else only what moved, the module docstring).

        A full build (asked, the first of a process, or every ``full_every_s``) is made apart
        first (``_build_apart``): the publish under the lock then builds only what moved since.
        """
        if (full or self._full_due()) and self._build_apart():
            full = False
        try:
            return self._publish(full)
        except IntegrityError:
            # Two controllers made this database's first table at once: one epoch wins, and
            # this publish builds on it.
            return self._publish(full)

    def _publish(self, full: bool) -> RoutingTable:
        # What the revision row says is answered only once its transaction committed: a
        # commit that fails (SQLite busy, a connection lost at COMMIT) answered nothing, and
        # must not read as a database gone back at the next publish.
        with self._write_lock:
            table, answered = self._publish_in_transaction(full)
            self._answer(answered)
            return table

    def _publish_in_transaction(self, full: bool) -> tuple[RoutingTable, tuple[str, int, str]]:
        with self._transaction() as session:
            # The row first, the decisions after: a publish that waited for another reads
            # at least what that one did, so a higher revision never carries older decisions.
            current = session.get(TableRevisionRow, 1, with_for_update=True)
            if current is None:
                current = TableRevisionRow(
                    id=1, revision=0, digest="", epoch=uuid.uuid4().hex, published_at=_now()
                )
                session.add(current)
            built = self._build(session, current.epoch, full)
            digest = built_digest(built)
            above = self._went_back(current)
            if above is not None:
                current.revision = above + 1
                current.digest = digest
                current.published_at = _now()
            elif current.digest != digest:
                current.revision += 1
                current.digest = digest
                current.published_at = _now()
            table = RoutingTable(
                revision=current.revision, epoch=current.epoch, models=dict(built.entries)
            )
            return table, _answered(current)

    def _answer(self, row: tuple[str, int, str]) -> None:
        """``row`` (epoch, revision, digest), committed, is what this process now answers
        (under the write lock)."""
        answered = self._answered
        if answered is None or answered[0] != row[0] or row[1] > answered[1]:
            self._answered = row

    def _went_back(self, row: TableRevisionRow) -> int | None:
        """The revision this process answered above ``row``'s, or at it with other content:
        the database went back since, and the table made now must go above it (else None)."""
        answered = self._answered
        if answered is None or answered[0] != row.epoch:
            return None
        _, revision, digest = answered
        if row.revision > revision or (row.revision == revision and row.digest == digest):
            return None
        log.warning(
            "the database's revision went back to %d in epoch %s, below or at the %d this "
            "controller answered with other content (restored from a backup?): its decisions "
            "are published above it, for replicas to take",
            row.revision, row.epoch, revision,
            extra={"event": "table_went_back", "epoch": row.epoch, "stored": row.revision,
                   "answered": revision},
        )  # fmt: skip
        return revision

    def _build(self, session: Session, epoch: str, full: bool) -> _Built:
        """The cache brought up to the decisions as this transaction reads them."""
        try:
            return self._build_on(session, epoch, full)
        except BaseException:
            self._built = None  # half updated: the next publish builds in full
            raise

    def _full_due(self) -> bool:
        built = self._built
        return built is None or self.clock() - built.built_at >= self.full_every_s

    def _build_apart(self) -> bool:
        """A full build outside the write lock, in a read transaction of its own, put in as the
        cache; False when the database has no table yet (the publish builds in full).

        Every decision's commit takes the write lock (``Store.update_model``), and a full build
        at 10,000 models x 5 versions is 8-9 s of a core: made under the lock, every 600 s the
        decisions waited that long. Made here, it holds each model's generation as this
        transaction read it, so the publish that follows under the lock rebuilds what was
        written since, as an incremental publish does."""
        # What it may keep, copied under the lock: a publish updates the cache in place (a
        # model's entry, then its JSON), and an entry read between the two would be kept with
        # the JSON of the one before, the revision row's digest then not its table's.
        with self._write_lock:
            previous = self._built
            if previous is not None:
                previous = _Built(
                    epoch=previous.epoch,
                    entries=dict(previous.entries),
                    fragments=dict(previous.fragments),
                )
        with self._transaction() as session:
            row = session.get(TableRevisionRow, 1)
            if row is None:
                return False
            kept = previous if previous is not None and previous.epoch == row.epoch else None
            built = _Built(epoch=row.epoch, built_at=self.clock())
            self._fill(session, built, kept)
        with self._write_lock:
            # Whatever a publish did to the cache meanwhile is newer than this read, and shows
            # as a generation moved against the ones read here: rebuilt by the next publish.
            self._built = built
        return True

    def _build_on(self, session: Session, epoch: str, full: bool) -> _Built:
        now = self.clock()
        built = self._built
        # What a full build may keep: the entries of the table built last, where equal.
        kept: _Built | None = None
        stale = built is None or built.epoch != epoch or now - built.built_at >= self.full_every_s
        if full or built is None or stale:
            kept = built if built is not None and built.epoch == epoch else None
            built = _Built(epoch=epoch, built_at=now)
            self._built = None
        self._fill(session, built, kept)
        self._built = built
        return built

    def _fill(self, session: Session, built: _Built, kept: _Built | None) -> None:
        """``built`` brought up to the decisions as ``session`` reads them."""
        m = RegisteredModelRow
        generations: dict[str, tuple[int, datetime]] = {
            name: (generation, written)
            for name, generation, written in session.execute(
                select(m.name, m.generation, m.updated_at).where(m.deleted_at.is_(None))
            ).all()
        }
        rollouts = rollouts_under_way(session)
        moved = [
            name
            for name, generation in generations.items()
            if built.generations.get(name) != generation
            or built.rollouts.get(name) != rollouts.get(name)
        ]
        gone = built.generations.keys() - generations.keys()
        for name in gone:
            _drop(built, name)
        for start in range(0, len(moved), _CHUNK):
            chunk = moved[start : start + _CHUNK]
            records = [
                to_record(row)
                for row in session.scalars(
                    select(m).where(m.name.in_(chunk)).options(selectinload(m.versions))
                ).all()
            ]
            _update(built, records, rollouts, generations, kept)
            for name in set(chunk) - {r.name for r in records}:
                _drop(built, name)  # deleted between the two reads (PostgreSQL's read committed)
        built.rollouts = dict(rollouts)
        if moved or gone:
            built.entries = {name: built.entries[name] for name in sorted(built.entries)}


def _update(
    built: _Built,
    records: list[ModelRecord],
    rollouts: Mapping[str, Rollout],
    generations: Mapping[str, tuple[int, datetime]],
    kept: _Built | None = None,
) -> None:
    """``built`` brought up to ``records``. ``kept``: the table built before a full build, whose
    entry (and its JSON) a model keeps when the build made it equal: the broadcaster then finds
    the table it holds in the same objects (nothing to compare, nothing to take), the new
    copies are freed a chunk at a time rather than held beside the whole table held (at
    10,000 models x 5 versions the heap's high-water mark rose by a table's entries at every
    full build), and their JSON is not made again."""
    fresh = build_table(records, revision=0, epoch=built.epoch, rollouts=rollouts).models
    for record in records:
        entry = fresh.get(record.name)
        if entry is None:  # buried since its generation was read: not in the table
            _drop(built, record.name)
            continue
        # What the generations' read showed (PostgreSQL's read committed may have read the
        # record newer: then the next publish builds it once more, never once less).
        built.generations[record.name] = generations[record.name]
        if kept is not None:
            held = kept.entries.get(record.name)
            fragment = kept.fragments.get(record.name)
            if held is not None and fragment is not None and held == entry:
                built.entries[record.name], built.fragments[record.name] = held, fragment
                continue
        built.entries[record.name] = entry
        dumped = json.dumps(entry.model_dump(mode="json"), sort_keys=True)
        built.fragments[record.name] = json.dumps(record.name) + ": " + dumped


def _drop(built: _Built, name: str) -> None:
    for held in (built.generations, built.entries, built.fragments):
        held.pop(name, None)


def _around_models(epoch: str) -> tuple[str, str]:
    """What ``content_digest`` hashes before and after the models' value (``json.dumps``'s
    default separators)."""
    head = RoutingTable(revision=0, epoch=epoch).model_dump(
        mode="json", exclude={"revision", "epoch", "models"}
    )
    return around_models(head, (", ", ": "))


def built_json(built: _Built) -> str:
    """What ``content_digest`` hashes for a table of ``built.entries``: the same bytes."""
    before, after = _around_models(built.epoch)
    models = "{" + ", ".join(built.fragments[name] for name in sorted(built.fragments)) + "}"
    return before + models + after


def built_digest(built: _Built) -> str:
    """The SHA-256 hex of ``built_json(built)``, fed a model at a time: the JSON of a whole
    table is never made (at 50,000 versions the join, its copies and its encoding were ~190 MB
    alive at once, at every publish; here ~0.1 MB)."""
    before, after = _around_models(built.epoch)
    digest = hashlib.sha256(before.encode() + b"{")
    for i, name in enumerate(sorted(built.fragments)):
        digest.update((", " if i else "").encode() + built.fragments[name].encode())
    digest.update(b"}" + after.encode())
    return digest.hexdigest()


def _answered(row: TableRevisionRow) -> tuple[str, int, str]:
    return (row.epoch, row.revision, row.digest)

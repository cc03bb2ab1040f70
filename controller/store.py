"""The one layer that owns database transactions.

Each public method is one transaction. Read-decide-write goes through ``update_model``, which
runs the caller's decision inside the transaction and under a write lock, so the worker and
the admin API never overwrite each other's decisions. The lock serialises writers within one
process. Across processes: on PostgreSQL the transaction also locks the model's row (``SELECT
... FOR UPDATE``), and a publish the revision row, so controllers sharing a database wait for
each other instead of writing from a stale read. SQLite ignores row locks and lets a write
fail on a snapshot another process changed: there, run one controller per database.

Row locks order writers; they do not stop a write built on a read made *before* the other
writer committed (a reconcile reads the registry, slowly, outside any transaction). So each
model has a generation, one more with every write, and a record that carries the generation it
was read at is written only by a conditional UPDATE on it (``GenerationConflict`` otherwise),
as Kubernetes does with ``resourceVersion``. A new leader makes every earlier read stale
(``fence_in_flight``), so its predecessor's in-flight work cannot commit. The guarantee:
docs/architecture.md, "The controller's database" and "Stepping down".

Two controllers on one PostgreSQL (``controller/leadership.py``): a follower hands what it is
asked to reconcile to the leader through ``reconcile_requests`` (with the webhook's delivery id,
in one transaction), and loads the tables the leader publishes (``published_table``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from controller import faults
from controller.audit import AuditEvent, diff
from controller.exceptions import GenerationConflict
from controller.records import ModelRecord
from controller.rows import to_record, utc, write_row
from controller.schema import (
    AuditEventRow,
    ReconcileRequestRow,
    RegisteredModelRow,
    WebhookDeliveryRow,
)
from controller.store_tables import MAX_CATCH_UP, REVISION_CEILING, TableRevisions
from controller.write_back_marks import WriteBackMarks

__all__ = ["MAX_CATCH_UP", "REVISION_CEILING", "Store"]


_STAMP = select(RegisteredModelRow.generation, RegisteredModelRow.updated_at).where(
    RegisteredModelRow.name == bindparam("name")
)


def _now() -> datetime:
    return datetime.now(UTC)


class Store(TableRevisions, WriteBackMarks):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._write_lock = threading.RLock()

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def _load_row(
        self, session: Session, name: str, *, for_update: bool = False
    ) -> RegisteredModelRow | None:
        query = (
            select(RegisteredModelRow)
            .where(RegisteredModelRow.name == name)
            .options(selectinload(RegisteredModelRow.versions))
        )
        if for_update:
            # Held until commit: another controller's read-decide-write of this model waits
            # here, then reads what this one wrote. Its versions are written only under it.
            query = query.with_for_update()
        return session.scalars(query).one_or_none()

    def load_model(self, name: str) -> ModelRecord | None:
        with self._transaction() as session:
            row = self._load_row(session, name)
            return to_record(row) if row else None

    def stamp(self, name: str) -> tuple[int, datetime | None] | None:
        """``name``'s generation and last write time (None: not stored), in one small query:
        every write moves both, so an equal stamp is an unwritten record
        (``controller/unchanged.py``)."""
        # A connection, not a session, and a statement built once: asked once per pass.
        with self._engine.connect() as connection:
            found = connection.execute(_STAMP, {"name": name}).one_or_none()
        return (int(found[0]), utc(found[1])) if found is not None else None

    def _all_records(self, session: Session) -> list[ModelRecord]:
        rows = session.scalars(
            select(RegisteredModelRow).options(selectinload(RegisteredModelRow.versions))
        ).all()
        return [to_record(r) for r in rows]

    def all_models(self) -> list[ModelRecord]:
        with self._transaction() as session:
            return self._all_records(session)

    def model_names(self) -> list[str]:
        with self._transaction() as session:
            return list(session.scalars(select(RegisteredModelRow.name)).all())

    def stored_names(self) -> dict[str, bool]:
        """Every stored model's name, and whether it is a tombstone (deleted from the registry)."""
        r = RegisteredModelRow
        with self._transaction() as session:
            rows = session.execute(select(r.name, r.deleted_at.is_not(None))).all()
            return {name: bool(buried) for name, buried in rows}

    def update_model(
        self,
        name: str,
        change: Callable[[ModelRecord | None], ModelRecord | None],
        actor: str = "controller",
    ) -> ModelRecord | None:
        """Read one model, let ``change`` compute its new record, write it: one transaction.

        ``change`` gets ``None`` for a model not stored yet and returns ``None`` to delete it.
        An exception from ``change`` rolls everything back. Nothing is written when the new
        record equals the old one; what is written is audited, by ``actor``, in the same
        transaction. A record returned with a ``generation`` (the one its maker read, 0 for
        "not stored") is written only if the row still has it, else ``GenerationConflict``;
        one built on ``change``'s own argument carries that row's, so it always is. The record
        returned carries the generation it now has.
        """
        try:
            return self._update_model(name, change, actor)
        except IntegrityError:
            # A model not stored yet has no row to lock: when two controllers store it at
            # once, the second insert fails. Once more, the row is there to lock and build on.
            return self._update_model(name, change, actor)

    def _update_model(
        self,
        name: str,
        change: Callable[[ModelRecord | None], ModelRecord | None],
        actor: str,
    ) -> ModelRecord | None:
        with self._write_lock, self._transaction() as session:
            row = self._load_row(session, name, for_update=True)
            current = to_record(row) if row else None
            updated = change(current)
            if updated is None:
                if row is not None:
                    session.delete(row)
                    self._forget_mark(session, name)
                self._audit(session, diff(name, current, updated, actor))
                return None
            if updated == current:
                # Nothing to write, so nothing undone, whatever read it was decided from.
                return replace(updated, generation=current.generation if current else 0)
            written = self._write(session, row, updated)
            self._audit(session, diff(name, current, updated, actor))
            # Inert unless a fault test sets SIGSERVE_FAULT_KILL_AT (controller.faults).
            faults.kill_at("in_transaction", name, before=session.flush)
            return replace(updated, generation=written)

    def _audit(self, session: Session, events: list[AuditEvent]) -> None:
        now = _now()
        for e in events:
            session.add(
                AuditEventRow(
                    model_name=e.model,
                    version=e.version,
                    kind=e.kind,
                    actor=e.actor,
                    at=now,
                    before=e.before,
                    after=e.after,
                )
            )

    def events(self, name: str, *, limit: int, before_id: int | None = None) -> list[AuditEvent]:
        """A model's audit events, newest first; ``before_id`` pages on from an earlier page."""
        query = select(AuditEventRow).where(AuditEventRow.model_name == name)
        if before_id is not None:
            query = query.where(AuditEventRow.id < before_id)
        with self._transaction() as session:
            rows = session.scalars(query.order_by(AuditEventRow.id.desc()).limit(limit)).all()
            return [
                AuditEvent(
                    model=r.model_name,
                    version=r.version,
                    kind=r.kind,
                    actor=r.actor,
                    before=r.before,
                    after=r.after,
                    at=utc(r.at),
                    id=r.id,
                )
                for r in rows
            ]

    def prune_events(self, older_than: timedelta) -> None:
        with self._transaction() as session:
            session.execute(delete(AuditEventRow).where(AuditEventRow.at < _now() - older_than))

    def _write(self, session: Session, row: RegisteredModelRow | None, record: ModelRecord) -> int:
        """Write ``record`` if its row still has the generation it was read at; the new one."""
        now = _now()
        stored = row.generation if row is not None else 0
        read = stored if record.generation is None else record.generation
        if row is None:
            if read != 0:
                raise GenerationConflict(record.name, read, 0)  # deleted since it was read
            row = RegisteredModelRow(name=record.name, created_at=now, generation=1)
            session.add(row)
            write_row(row, record, now)
            return 1
        # The compare-and-set itself: the row lock above orders writers on PostgreSQL; this
        # refuses the one whose read is older than the last write, on either backend.
        bumped = session.execute(
            update(RegisteredModelRow)
            .where(RegisteredModelRow.name == record.name, RegisteredModelRow.generation == read)
            .values(generation=read + 1)
        )
        if cast(CursorResult[Any], bumped).rowcount != 1:
            raise GenerationConflict(record.name, read, stored)
        write_row(row, record, now)
        return read + 1

    def fence_in_flight(self) -> int:
        """Make every read made before now stale; how many models it covered.

        A new leader calls this before its first reconcile: a controller that stopped leading
        may still have a reconcile in flight (its thread outlives its leadership, and a frozen
        leader does not know it lost the lock), and that reconcile's write, built on what it
        read before the takeover, must not commit. One more on every generation refuses it.
        On SQLite there is no election and no other controller (one per database): nothing to
        fence, and nothing to wait for when another process holds the database's lock.
        """
        with self._write_lock, self._transaction() as session:
            if session.get_bind().dialect.name != "postgresql":
                return 0
            self._fence_marks(session)
            bumped = session.execute(
                update(RegisteredModelRow).values(generation=RegisteredModelRow.generation + 1)
            )
            return cast(CursorResult[Any], bumped).rowcount

    def delete_model(self, name: str, actor: str = "controller") -> bool:
        with self._write_lock, self._transaction() as session:
            row = self._load_row(session, name, for_update=True)
            if row is None:
                return False
            self._audit(session, diff(name, to_record(row), None, actor))
            session.delete(row)
            self._forget_mark(session, name)
            return True

    def record_delivery(
        self, delivery_id: str, event: str, hand_off: tuple[str, str] | None = None
    ) -> bool:
        """Remember a webhook delivery; False when it was seen before.

        ``hand_off`` (model name, actor): a follower's delivery, whose reconcile is requested
        of the leader in the same transaction, so a delivery recorded is never a delivery lost.
        """
        try:
            with self._transaction() as session:
                session.add(
                    WebhookDeliveryRow(delivery_id=delivery_id, event=event, received_at=_now())
                )
                if hand_off is not None:
                    session.flush()  # a duplicate fails here, before anything is requested
                    self._request(session, [hand_off[0]], hand_off[1])
        except IntegrityError:
            return False
        return True

    def request_reconcile(self, names: Iterable[str], actor: str) -> None:
        """Ask the leader to reconcile ``names`` (one row per name; a newer ask replaces)."""
        with self._transaction() as session:
            self._request(session, list(names), actor)

    def _request(self, session: Session, names: list[str], actor: str) -> None:
        if not names:
            return
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        rows = [{"model_name": n, "actor": actor, "requested_at": _now()} for n in names]
        upsert = dialect.insert(ReconcileRequestRow).values(rows)
        session.execute(
            upsert.on_conflict_do_update(
                index_elements=[ReconcileRequestRow.model_name],
                set_={"actor": upsert.excluded.actor, "requested_at": upsert.excluded.requested_at},
            )
        )

    def take_reconcile_requests(self) -> list[tuple[str, str]]:
        """The requested (name, actor) pairs, oldest first, removed as they are taken."""
        r = ReconcileRequestRow
        with self._transaction() as session:
            taken = session.execute(
                delete(r).returning(r.model_name, r.actor, r.requested_at)
            ).all()
        return [(name, actor) for name, actor, _ in sorted(taken, key=lambda t: t[2])]

    def prune_deliveries(self, older_than: timedelta) -> None:
        with self._transaction() as session:
            session.execute(
                delete(WebhookDeliveryRow).where(
                    WebhookDeliveryRow.received_at < _now() - older_than
                )
            )

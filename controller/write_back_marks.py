"""Which models' decisions reached the registry: the write-back lane's state, kept in the store.

``write_backs`` holds, per model, the generation (``controller/store.py``) whose decision was
last written back in full (migration 0016). A model whose row is missing or names another
generation than the model's is *behind*: every resync hands it to the write-back lane
(``controller/write_back_lane.py``), so nothing the lane held in memory (a restart, a
step-down) is needed to finish it. A mark is set only if the model still has the generation the
write-back read, in one statement: a decision committed meanwhile stays behind, and its own
write-back (or the next resync) follows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, cast

from sqlalchemy import CursorResult, Integer, String, delete, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from controller.schema import Base, RegisteredModelRow


class WriteBackRow(Base):
    __tablename__ = "write_backs"

    model_name: Mapped[str] = mapped_column(String(256), primary_key=True)
    # The model's generation whose verdict tags and alias the registry has.
    generation: Mapped[int] = mapped_column(Integer)


class WriteBackMarks:
    """The store's part for the write-back lane; mixed into ``Store`` (one transaction each)."""

    _transaction: Callable[[], AbstractContextManager[Session]]

    def mark_written_back(self, name: str, generation: int) -> bool:
        """Record that ``name``'s decision at ``generation`` is in the registry; False (nothing
        recorded) when the model was written since."""
        m, w = RegisteredModelRow, WriteBackRow
        with self._transaction() as session:
            current = session.scalar(select(m.generation).where(m.name == name))
            if current != generation:
                return False
            dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
            upsert = dialect.insert(w).values(model_name=name, generation=generation)
            session.execute(
                upsert.on_conflict_do_update(
                    index_elements=[w.model_name], set_={"generation": generation}
                )
            )
            return True

    def behind_write_back(self) -> list[str]:
        """Models (tombstones aside) whose latest decision is not marked written back."""
        m, w = RegisteredModelRow, WriteBackRow
        marked = exists().where(w.model_name == m.name, w.generation == m.generation)
        with self._transaction() as session:
            return list(
                session.scalars(
                    select(m.name).where(m.deleted_at.is_(None), ~marked).order_by(m.name)
                ).all()
            )

    def count_behind_write_back(self) -> int:
        """How many models ``behind_write_back`` would list (the backlog gauge, ``KeptCount``)."""
        m, w = RegisteredModelRow, WriteBackRow
        marked = exists().where(w.model_name == m.name, w.generation == m.generation)
        with self._transaction() as session:
            count = session.scalar(
                select(func.count()).select_from(m).where(m.deleted_at.is_(None), ~marked)
            )
            return int(count or 0)

    @staticmethod
    def _fence_marks(session: Session) -> None:
        """Before every model's generation moves on (``Store.fence_in_flight``): the marks that
        were current move with them, so a takeover leaves nothing behind that was not."""
        m, w = RegisteredModelRow, WriteBackRow
        current = (
            select(m.generation).where(m.name == w.model_name).scalar_subquery()
        )
        session.execute(
            update(w).where(w.generation == current).values(generation=w.generation + 1)
        )

    @staticmethod
    def _forget_mark(session: Session, name: str) -> int:
        """The model's row is deleted: a model stored again under its name starts unmarked."""
        gone = session.execute(delete(WriteBackRow).where(WriteBackRow.model_name == name))
        return cast(CursorResult[Any], gone).rowcount


class KeptCount:
    """The ``behind`` gauge's figure without a query on the scrape's path: /metrics runs on the
    event loop, where a COUNT over every model waiting on a slow database or a full pool (30 s)
    would freeze webhooks, /healthz and leadership. A read answers the count last finished
    (NaN before the first and after a failed one) and starts the next in a thread of its own,
    unless one still runs: one COUNT per scrape at most, as before, each a scrape late."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count
        self._value = float("nan")
        self._lock = threading.Lock()
        self._counting = False

    def __call__(self) -> float:
        with self._lock:
            start, self._counting = not self._counting, True
        if start:
            # A daemon: a count stuck on the database never holds the process's exit.
            threading.Thread(target=self.refresh, name="sigserve-behind-count", daemon=True
                             ).start()  # fmt: skip
        return self._value

    def refresh(self) -> None:
        try:
            self._value = float(self._count())
        except Exception:  # the database down: no figure, and the scrape still answers
            self._value = float("nan")
        finally:
            with self._lock:
                self._counting = False

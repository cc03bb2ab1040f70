"""Decisions as they are committed: one log line per version and ``sigserve_decisions_total``.

Every write of a model goes through ``Store.update_model`` (the reconciler, the admin API, load
reports), so that is where a decision is seen, whoever made it. ``ObservedStore`` tells
``DecisionLog`` what the change function read and wrote once the transaction committed: a
rolled-back write counts nothing. A decision is a version whose verdict (state or reasons)
changed, exactly the audit log's ``decision`` events (``controller.audit``), so a reconcile
that changes nothing logs and counts nothing.

A line carries the model, the version, its new state, the model's policies, the actor
(``webhook:<delivery id>``, ``resync``, ``admin``...) and, through ``wire.logs.trail``, the
delivery ids of the reconcile pass that made it (``controller.worker``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Engine

from controller.audit import diff
from controller.metrics import Metrics
from controller.records import ModelRecord
from controller.store import Store

log = logging.getLogger(__name__)

Change = Callable[[ModelRecord | None], ModelRecord | None]


class DecisionLog:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def committed(
        self, name: str, before: ModelRecord | None, after: ModelRecord | None, actor: str
    ) -> None:
        if after is None:
            return
        for event in diff(name, before, after, actor):
            if event.kind != "decision" or event.after is None or event.version is None:
                continue
            version = after.versions[event.version]
            state = version.state.value
            self._metrics.decisions.labels(state, after.policy).inc()
            log.info(
                "%s v%s: %s%s",
                name,
                event.version,
                state,
                f" ({'; '.join(version.reasons)})" if version.reasons else "",
                extra={
                    "event": "decision",
                    "model": name,
                    "version": event.version,
                    "state": state,
                    "policy": after.policy,
                    "environment_policy": after.environment_policy,
                    "actor": actor,
                    "reasons": list(version.reasons),
                },
            )


class ObservedStore(Store):
    """A ``Store`` that tells ``DecisionLog`` of each committed model write."""

    def __init__(self, engine: Engine, *, decisions: DecisionLog) -> None:
        super().__init__(engine)
        self._decisions = decisions

    def update_model(
        self, name: str, change: Change, actor: str = "controller"
    ) -> ModelRecord | None:
        seen: list[tuple[ModelRecord | None, ModelRecord | None]] = []

        def observed(current: ModelRecord | None) -> ModelRecord | None:
            updated = change(current)
            seen[:] = [(current, updated)]  # the last try is the one committed
            return updated

        result = super().update_model(name, observed, actor)
        if seen:
            try:
                self._decisions.committed(name, *seen[0], actor)
            except Exception:
                # Telling is a courtesy: the write is committed whatever a log line does.
                log.exception("logging the decisions of %s failed", name)
        return result

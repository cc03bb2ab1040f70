"""A database restored from a backup under a running controller (same epoch, counting again
from a lower revision): the long-poll never takes a revision's table with other content."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from controller.broadcaster import TableBroadcaster
from controller.records import ModelRecord, VersionRecord
from controller.table_builder import build_table
from wire.routing_table import RoutingTable, VersionState

LIVE, QUARANTINED = VersionState.LIVE, VersionState.QUARANTINED


def _model(name: str, state: VersionState = LIVE) -> ModelRecord:
    return ModelRecord(
        name=name, policy="auto", default_version="1",
        versions={"1": VersionRecord(version="1", state=state, reasons=[state.value],
                                     decided_at=datetime(2026, 1, 1, tzinfo=UTC))},
    )  # fmt: skip


def test_the_broadcaster_never_takes_a_revision_held_with_other_content() -> None:
    """The long-poll keeps each table's body by its revision: a table taken for "the revision
    held, rebuilt" must be that content, or replicas get the old body for the new table."""

    def table(state: VersionState) -> RoutingTable:
        return build_table([_model("a", state)], 3, "e")

    async def run() -> None:
        broadcaster = TableBroadcaster()
        held = table(LIVE)
        await broadcaster.offer(held)
        await broadcaster.offer(table(QUARANTINED))
        assert broadcaster.current is held
        rebuilt = table(LIVE)  # the same content in other objects: taken
        await broadcaster.offer(rebuilt)
        assert broadcaster.current is rebuilt

    asyncio.run(run())

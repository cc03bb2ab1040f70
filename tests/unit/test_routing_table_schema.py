"""The routing table's schema across a rolling upgrade (schema 3: ``environment``).

A replica of the release before reads schema 2, sends no ``schema`` on its poll and ignores
fields it does not know: it must never get a version with an environment of its own as one it
may serve (it would run it in its own interpreter), and must still get everything else. A
replica of this release reads an older controller's table, and a table another release's
replica left in the store.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from serving.signed_table import SignedTable, read_answer, read_stored
from serving.table_source import SchemaMismatch, TableSource, decode
from tests.unit.test_controller_own_environments import (
    AUTH,
    SERVING_TOKEN,
    published_controller,
    report,
)
from tests.unit.test_serving_table_source import MemoryStore, wait_for
from wire.routing_table import (
    SCHEMA_VERSION,
    WITHHELD,
    EnvironmentSpec,
    ModelEntry,
    Rollout,
    RoutingTable,
    VersionEntry,
    VersionState,
    for_schema,
)
from wire.table_signature import SIGNATURE_HEADER, table_key

LIVE, PENDING, QUARANTINED = VersionState.LIVE, VersionState.PENDING, VersionState.QUARANTINED
SPEC = EnvironmentSpec(digest="d" * 64, kind="layered", requirements=["tiny-pkg==1.0"])


def _entry(version: str, state: VersionState, env: bool = False, **more: object) -> VersionEntry:
    return VersionEntry(version=version, state=state, source=f"file:///m/{version}",
                        mlmodel_digest="a" * 64, environment=SPEC if env else None,
                        **more)  # type: ignore[arg-type]  # fmt: skip


def _table(revision: int = 5, schema: int = SCHEMA_VERSION) -> RoutingTable:
    versions = {
        "1": _entry("1", LIVE),
        "2": _entry("2", LIVE, env=True),
        "3": _entry("3", QUARANTINED, env=True, reasons=["failed in both"]),
        "4": _entry("4", PENDING, env=True, awaiting_proof=True),
    }
    return RoutingTable(schema_version=schema, revision=revision, epoch="e", models={
        "m": ModelEntry(name="m", default_version="2", versions=versions,
                        rollout=Rollout(id="r", candidate="2", weight=0.5)),
        "plain": ModelEntry(name="plain", default_version="1",
                            versions={"1": _entry("1", LIVE)}),
    })  # fmt: skip


def test_a_replica_of_schema_2_gets_each_own_environment_version_withheld() -> None:
    table = _table()
    old = for_schema(table, 2)
    assert old.schema_version == 2 and (old.revision, old.epoch) == (5, "e")
    m = old.models["m"].versions
    # Never a version to serve or prove: the replica answers 503 naming why.
    assert (m["2"].state, m["2"].reasons, m["2"].environment) == (PENDING, [WITHHELD], None)
    assert (m["4"].state, m["4"].awaiting_proof) == (PENDING, False)
    # A quarantined one is refused as before; everything else is the table's.
    assert m["3"] == table.models["m"].versions["3"]
    assert m["1"] == table.models["m"].versions["1"]
    assert old.models["plain"] == table.models["plain"]
    # A rollout to a withheld candidate sends its share to the default, as an ended one does.
    assert old.models["m"].rollout is None
    assert for_schema(table, SCHEMA_VERSION) is table
    assert for_schema(table, SCHEMA_VERSION + 1) is table


def test_the_controller_answers_each_replica_its_schema_signed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, spec = published_controller(tmp_path, monkeypatch)
    key = table_key(SERVING_TOKEN)
    with TestClient(create_app(settings)) as c:
        # Version 2 proven in its own environment: live, for a replica that knows environments.
        body = {"model": "m", "version": "2", **report("2"), "environment_digest": spec.digest}
        body.pop("at")
        assert c.post("/serving/proofs", json=body, headers=AUTH).json()["state"] == "live"
        answers: dict[str, SignedTable] = {}
        for said, params in (("none", {}), ("3", {"schema": 3}), ("2", {"schema": 2})):
            r = c.get("/routing-table", params=params, headers=AUTH)
            answers[said] = read_answer(r.content, r.headers.get(SIGNATURE_HEADER), key)
    old, new = answers["none"].table, answers["3"].table
    assert (old.schema_version, new.schema_version) == (2, SCHEMA_VERSION)
    assert answers["2"].canonical == answers["none"].canonical
    assert old.revision == new.revision
    # What a replica of the release before reads of it: the raw JSON, unknown fields ignored.
    raw = json.loads(answers["none"].canonical)["models"]["m"]["versions"]["2"]
    assert (raw["state"], raw["reasons"], raw.get("environment")) == ("pending", [WITHHELD], None)
    assert new.models["m"].versions["2"].state == LIVE
    assert new.models["m"].versions["2"].environment == spec
    # The version served in the shared environment is the same in both.
    assert old.models["m"].versions["1"] == new.models["m"].versions["1"]


def test_a_replica_reads_schema_2_and_this_one_and_refuses_others() -> None:
    for schema in (2, SCHEMA_VERSION):
        assert decode(_table(schema=schema).model_dump_json()).schema_version == schema
    for schema in (1, SCHEMA_VERSION + 1):
        with pytest.raises(SchemaMismatch, match=f"schema_version {schema}; this replica reads"):
            decode(json.dumps({"schema_version": schema, "revision": 1}))


class Controller:
    """Answers like a controller that holds ``table``, in the schema the poll asks for (an older
    controller: in its own, whatever the poll says)."""

    def __init__(self, table: RoutingTable, *, older: bool = False) -> None:
        self.table = table
        self.older = older
        self.polls: list[dict[str, str]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.polls.append(params)
        if self.table.revision > int(params["after"]):
            answered = self.table if self.older else for_schema(self.table, int(params["schema"]))
            return httpx.Response(200, content=answered.model_dump_json())
        await asyncio.sleep(0.01)
        return httpx.Response(204)


def _run(controller: Controller, store: MemoryStore | None = None) -> TableSource:
    async def scenario() -> TableSource:
        source = TableSource("http://controller", store=store,
                             transport=httpx.MockTransport(controller))  # fmt: skip
        await source.start(wait_s=2)
        await wait_for(lambda: len(controller.polls) >= 3)
        await source.stop()
        return source

    return asyncio.run(scenario())


def test_a_replica_asks_for_its_schema_and_takes_an_older_controllers_table() -> None:
    new = Controller(_table())
    source = _run(new)
    assert {p["schema"] for p in new.polls} == {str(SCHEMA_VERSION)}
    assert source.table is not None and source.table.models["m"].versions["2"].state == LIVE

    # A controller of the release before answers schema 2 (with ``environment``, which the
    # release before last already published): taken, asked from its revision on, no spin.
    older = Controller(_table(schema=2), older=True)
    source = _run(older)
    assert source.table is not None and source.table.schema_version == 2
    assert source.table.models["m"].versions["2"].environment == SPEC
    assert [p["after"] for p in older.polls[1:3]] == ["5", "5"]


def test_a_stored_view_for_the_release_before_is_replaced_by_this_schemas_same_revision() -> None:
    # A replica of the release before wrote revision 5 as its controller answered it.
    view = for_schema(_table(), 2)
    store = MemoryStore(json.dumps({"signature": None, "table": json.loads(
        view.model_dump_json())}))  # fmt: skip
    controller = Controller(_table())
    source = _run(controller, store)
    # Restored, then asked for again from below its revision: the full table taken.
    assert controller.polls[0]["after"] == "4"
    assert source.table is not None and source.table.schema_version == SCHEMA_VERSION
    assert source.table.models["m"].versions["2"].state == LIVE
    # And the store now holds this schema's, for the next replica to start.
    assert read_stored(store.raw or "", None).table.schema_version == SCHEMA_VERSION
    assert [p["after"] for p in controller.polls[1:3]] == ["5", "5"]

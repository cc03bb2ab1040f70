"""The routing table is signed on the real stack (docs/security.md, "The routing table's
signature"): the controller's answers and the copy the replicas keep in Ray's GCS verify with
the key of the stack's serving token, and a copy written into a GCS key by someone without it
is not restored by a replica's table source (the real ``GcsTableStore``, on this session's Ray).

Seconds on the session's stack: no replica is restarted (a new replica would hear from the
running controller within a poll anyway); the restore is the table source's own, in this
process, on a key of its own, so the app's replicas never read what is written here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from serving.gcs_store import GcsTableStore
from serving.signed_table import read_stored
from serving.table_source import TableSource
from sigserve.ports import free_port
from tests.integration.conftest import HOST, ControllerHandle, wait_for
from wire.table_signature import (
    SIGNATURE_HEADER,
    ForgedTable,
    UnsignedTable,
    canonical_json,
    table_key,
    verify,
)

APP = "sigserve"  # the app the session's stack runs (ServingSettings' default)


def test_the_controller_signs_its_answers_and_the_replicas_store_them_signed(
    ctl: ControllerHandle, serving_url: str
) -> None:
    key = table_key(ctl.secrets.serving_token)
    r = httpx.get(f"{ctl.url}/routing-table", params={"after": -1}, timeout=10,
                  headers={"Authorization": f"Bearer {ctl.secrets.serving_token}"})
    assert r.status_code == 200
    verify(canonical_json(r.json()), r.headers.get(SIGNATURE_HEADER), key)

    # What the replicas wrote for a replica that starts while the controller is down.
    raw = wait_for(lambda: GcsTableStore(APP).read(), 30)
    stored = read_stored(raw, key)  # raises unless signed with the stack's key
    assert stored.table.epoch == r.json()["epoch"]
    with pytest.raises(ForgedTable):
        read_stored(raw, table_key("a-guessed-serving-token"))


@pytest.fixture()
def own_key() -> Iterator[GcsTableStore]:
    """A GCS key of this test's own, deleted after."""
    from ray.experimental import internal_kv

    name = "signed-table-test"
    yield GcsTableStore(name)
    internal_kv._internal_kv_del(f"sigserve/routing-table/{name}".encode(), namespace=b"sigserve")


def restore(store: GcsTableStore, token: str) -> TableSource:
    """A replica's table source started from ``store`` while no controller answers."""

    async def start() -> TableSource:
        nowhere = f"http://{HOST}:{free_port()}"
        source = TableSource(nowhere, poll_timeout_s=0.1, store=store, token=token)
        await source.start()
        await source.stop()
        return source

    return asyncio.run(start())


def test_a_copy_written_into_the_gcs_without_the_serving_token_is_not_restored(
    ctl: ControllerHandle, serving_url: str, own_key: GcsTableStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = ctl.secrets.serving_token
    genuine = read_stored(wait_for(lambda: GcsTableStore(APP).read(), 30), table_key(token))
    envelope = json.loads(genuine.stored())
    # The attacker's edit: a later revision, so it would win over anything a replica holds.
    envelope["table"]["revision"] += 1_000
    caplog.set_level(logging.WARNING, logger="serving.table_source")

    for forged, error in [(json.dumps(envelope), ForgedTable),
                          (json.dumps({"signature": None, "table": envelope["table"]}),
                           UnsignedTable)]:
        own_key.write(forged)
        with pytest.raises(error):
            read_stored(own_key.read() or "", table_key(token))
        assert restore(own_key, token).table is None
    refused = [r.getMessage() for r in caplog.records
               if "ignoring the stored routing table" in r.getMessage()]
    assert len(refused) == 2, refused

    own_key.write(genuine.stored())
    assert restore(own_key, token).table == genuine.table

"""The long-poll's body kept gzipped (issue 20: the controller's memory at 50,000 versions): a
poll that takes gzip gets it as kept, any other the plain canonical JSON; both decode to the very
bytes the signature signs (``controller/long_poll.py``)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from controller.app import create_app
from controller.database import make_engine, migrate
from controller.long_poll import takes_gzip
from controller.records import ModelRecord, VersionRecord
from controller.settings import ControllerSettings
from controller.store import Store
from controller.table_builder import build_table, canonical_table, gzipped_table
from sigserve.ports import free_port
from wire.routing_table import RoutingTable, VersionState, for_schema
from wire.table_signature import SIGNATURE_HEADER, sign, table_key

TOKEN = "serving-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _table(epoch: str, revision: int = 2) -> RoutingTable:
    models = []
    for name in ("b", "a", "c"):  # not in order: the body sorts them
        m = ModelRecord(name=name, policy="auto")
        m.versions = {
            str(n): VersionRecord(
                version=str(n),
                state=VersionState.LIVE,
                signature={"inputs": '[{"type": "string"}]', "outputs": None},
                source="models:/m-1",
                artifact_uri="mlflow-artifacts:/0/m-1/artifacts",
                mlmodel_digest="d" * 64,
                manifest=[{"path": "MLmodel", "size": 120, "sha256": f"{n:064x}"}],
            )
            for n in range(1, 4)
        }
        models.append(m)
    return build_table(models, revision, epoch)


def test_the_gzipped_body_decodes_to_the_canonical_table_with_its_signature() -> None:
    table = _table("e")
    key = table_key(TOKEN)
    body, signature = gzipped_table(table, key)
    plain = canonical_table(table)
    assert zlib.decompress(body, wbits=31) == plain
    assert signature == sign(plain, key)
    assert len(body) < len(plain)
    unsigned, none = gzipped_table(RoutingTable(revision=0, epoch="e", models={}), None)
    assert none is None
    assert zlib.decompress(unsigned, wbits=31) == canonical_table(
        RoutingTable(revision=0, epoch="e", models={})
    )


@pytest.mark.parametrize(
    ("header", "takes"),
    [
        ("gzip, deflate, br", True),  # httpx's default: every replica
        ("GZIP", True),
        ("deflate;q=1, gzip;q=0.5", True),
        ("*", True),
        ("x-gzip", True),
        ("", False),
        ("identity", False),
        ("br, deflate", False),
        ("gzip;q=0", False),
        ("gzip;q=0, *", False),  # gzip named decides over "*"
        ("*;q=0", False),
        ("gzip;q=nope", False),
    ],
)
def test_which_accept_encoding_takes_gzip(header: str, takes: bool) -> None:
    assert takes_gzip(header) is takes


def serving_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """A controller app with a table published at start and the serving token ``TOKEN``; its
    registry is an address where nothing listens (the long-poll needs none)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = ControllerSettings(
        home=tmp_path, admin_token=SecretStr("admin-token-0123456789"),
        webhook_secret=SecretStr("hook-secret-0123456789"),
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        resync_interval_s=3600, serving_token=SecretStr(TOKEN),
    )  # fmt: skip
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    Store(engine).publish()
    engine.dispose()
    return create_app(settings)


@pytest.fixture()
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with TestClient(serving_app(tmp_path, monkeypatch)) as c:
        yield c


def _raw(client: TestClient, accept: str) -> tuple[bytes, dict[str, str]]:
    """The body as sent (not decoded by the client) and the headers."""
    params = {"after": -1, "schema": 3}
    with client.stream(
        "GET", "/routing-table", params=params, headers={**AUTH, "Accept-Encoding": accept}
    ) as r:
        assert r.status_code == 200
        return b"".join(r.iter_raw()), dict(r.headers)


def test_a_poll_taking_gzip_gets_the_gzipped_body_and_any_other_the_plain_bytes(
    client: TestClient,
) -> None:
    svc = client.app.state.services  # type: ignore[attr-defined]
    held = _table(svc.broadcaster.current.epoch)
    client.portal.call(svc.broadcaster.offer, held)  # type: ignore[union-attr]
    plain = canonical_table(for_schema(held, 3))
    signature = sign(plain, table_key(TOKEN))

    body, headers = _raw(client, "gzip, deflate")
    assert headers["content-encoding"] == "gzip"
    assert zlib.decompress(body, wbits=31) == plain
    assert headers[SIGNATURE_HEADER.lower()] == signature
    assert headers["vary"] == "Accept-Encoding"

    body, headers = _raw(client, "identity")
    assert "content-encoding" not in headers
    assert body == plain
    assert headers[SIGNATURE_HEADER.lower()] == signature
    assert headers["vary"] == "Accept-Encoding"

    # What a replica's client does with it: decoded, the same bytes.
    decoded = client.get("/routing-table", params={"after": -1, "schema": 3}, headers=AUTH)
    assert decoded.content == plain
    assert decoded.headers[SIGNATURE_HEADER] == signature

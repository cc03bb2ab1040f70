"""The long-poll's body is made off the event loop, once per table and schema (issue 20: at
50,000 versions it takes seconds, which ``/healthz``, the webhooks and the other polls must not
wait for; ``controller/long_poll.py``).

The app runs with its lifespan on one event loop, called through httpx's ASGI transport; the
body's making is ``gzipped_table`` itself, slowed by a seam that sleeps in the thread it runs in
(as a large table's encoding holds it)."""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from controller.records import ModelRecord, VersionRecord
from controller.table_builder import build_table, canonical_table, gzipped_table
from tests.unit.test_long_poll_gzip import AUTH, serving_app
from wire.routing_table import RoutingTable, VersionState
from wire.table_signature import SIGNATURE_HEADER

# How long the seam holds each making: well above what /healthz may take beside it.
SLOW_S = 0.5


def _table(epoch: str, revision: int) -> RoutingTable:
    m = ModelRecord(name="m", policy="auto")
    m.versions = {
        "1": VersionRecord(version="1", state=VersionState.LIVE, source="models:/m-1",
                           artifact_uri="mlflow-artifacts:/0/m-1/artifacts")
    }  # fmt: skip
    return build_table([m], revision, epoch)


def _slowed(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], threading.Event]:
    """``gzipped_table`` held ``SLOW_S`` in its thread; the names of the threads it ran in, and
    an event set when one began."""
    made: list[str] = []
    began = threading.Event()

    def slow(table: RoutingTable, key: bytes | None) -> tuple[bytes, str | None]:
        made.append(threading.current_thread().name)
        began.set()
        time.sleep(SLOW_S)
        return gzipped_table(table, key)

    monkeypatch.setattr("controller.long_poll.gzipped_table", slow)
    return made, began


def _run(app: FastAPI, body: Callable[[httpx.AsyncClient, FastAPI], object]) -> None:
    async def run() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ctl") as client:
                await body(client, app)  # type: ignore[misc]

    asyncio.run(run())


async def _offer(app: FastAPI, revision: int) -> RoutingTable:
    svc = app.state.services
    table = _table(svc.broadcaster.current.epoch, revision)
    await svc.broadcaster.offer(table)
    return table


def test_healthz_answers_while_a_poll_body_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made, began = _slowed(monkeypatch)
    app = serving_app(tmp_path, monkeypatch)

    async def body(client: httpx.AsyncClient, app: FastAPI) -> None:
        table = await _offer(app, 50)
        poll = asyncio.create_task(
            client.get("/routing-table", params={"after": -1, "schema": 3}, headers=AUTH)
        )
        assert await asyncio.to_thread(began.wait, 10)
        started = time.perf_counter()
        health = await client.get("/healthz")
        took = time.perf_counter() - started
        assert health.status_code == 200
        # On the event loop, /healthz waited for the whole making (SLOW_S).
        assert took < SLOW_S / 2, f"/healthz took {took:.2f}s beside the body's making"
        assert not poll.done()
        answer = await poll
        assert answer.status_code == 200 and answer.json()["revision"] == table.revision
        assert made and made[0] != threading.main_thread().name

    _run(app, body)


def test_polls_woken_together_make_the_body_once_and_a_failed_making_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made, _ = _slowed(monkeypatch)
    app = serving_app(tmp_path, monkeypatch)

    async def body(client: httpx.AsyncClient, app: FastAPI) -> None:
        revision = app.state.services.broadcaster.current.revision
        params = {"after": revision, "schema": 3, "timeout": 30}
        polls = [
            asyncio.create_task(client.get("/routing-table", params=params, headers=AUTH))
            for _ in range(6)
        ]
        await asyncio.sleep(0.2)  # all six held, waiting for a newer table
        table = await _offer(app, revision + 1)
        answers = await asyncio.gather(*polls)
        assert {a.status_code for a in answers} == {200}
        assert len(made) == 1, f"made {len(made)} times for one table and schema"
        assert len({(a.content, a.headers[SIGNATURE_HEADER]) for a in answers}) == 1
        # A poll without gzip: the plain JSON, from the same making.
        plain = await client.get(
            "/routing-table", params={"after": -1, "schema": 3},
            headers={**AUTH, "Accept-Encoding": "identity"},
        )  # fmt: skip
        assert "content-encoding" not in plain.headers
        assert plain.content == canonical_table(table) == answers[0].content
        assert len(made) == 1
        # A failed making is not kept: the next poll makes it again.
        calls: list[int] = []

        def fails_once(table: RoutingTable, key: bytes | None) -> tuple[bytes, str | None]:
            calls.append(1)
            if len(calls) == 1:
                raise zlib.error("made to fail")
            return gzipped_table(table, key)

        monkeypatch.setattr("controller.long_poll.gzipped_table", fails_once)
        await _offer(app, revision + 2)
        with pytest.raises(zlib.error):
            await client.get("/routing-table", params={"after": -1, "schema": 3}, headers=AUTH)
        again = await client.get("/routing-table", params={"after": -1, "schema": 3}, headers=AUTH)
        assert again.status_code == 200 and again.json()["revision"] == revision + 2
        assert len(calls) == 2

    _run(app, body)

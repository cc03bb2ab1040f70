"""A replica's routing-table polls carry the serving token, and a replica the controller
refuses for want of it says so as an error (``serving.table_source``; docs/security.md)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx
import pytest

from serving.table_source import TableSource
from wire.routing_table import ModelEntry, RoutingTable

TOKEN = "serving-token"
TABLE = RoutingTable(
    revision=3, epoch="e", models={"a": ModelEntry(name="a", default_version=None)}
)


class TokenCheckingController:
    """Answers GET /routing-table as a controller that requires the serving token does."""

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/routing-table"
        self.authorizations.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(
                401,
                json={"type": "urn:sigserve:problem:unauthorized", "status": 401},
                headers={"content-type": "application/problem+json",
                         "www-authenticate": "Bearer"},
            )
        if int(request.url.params["after"]) < TABLE.revision:
            return httpx.Response(200, content=TABLE.model_dump_json())
        await asyncio.sleep(0.01)
        return httpx.Response(204)


async def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {timeout}s")
        await asyncio.sleep(0.01)


def test_every_poll_carries_the_serving_token() -> None:
    async def scenario() -> None:
        controller = TokenCheckingController()
        source = TableSource("http://controller", poll_timeout_s=0.05,
                             transport=httpx.MockTransport(controller), token=TOKEN)
        await source.start(wait_s=2)
        try:
            assert source.table == TABLE
            await wait_for(lambda: len(controller.authorizations) >= 3)  # and the polls after
            assert set(controller.authorizations) == {f"Bearer {TOKEN}"}
        finally:
            await source.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("token", "says"),
    [(None, "SIGSERVE_SERVING_TOKEN is not set"),
     ("another", "SIGSERVE_SERVING_TOKEN differs from the controller's")],
    ids=["no-token", "wrong-token"],
)
def test_a_refused_replica_logs_an_error_naming_the_token_and_backs_off(
    token: str | None, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        controller = TokenCheckingController()
        source = TableSource("http://controller", poll_timeout_s=0.05,
                             transport=httpx.MockTransport(controller), token=token)
        with caplog.at_level(logging.WARNING, logger="serving.table_source"):
            await source.start()
            try:
                await wait_for(lambda: any(says in r.getMessage() for r in caplog.records))
                started = len(controller.authorizations)
                await asyncio.sleep(1.0)  # a window to count polls in, not a synchronisation
                polled = len(controller.authorizations) - started
            finally:
                await source.stop()
        assert source.table is None
        refusals = [r for r in caplog.records if says in r.getMessage()]
        assert {r.levelno for r in refusals} == {logging.ERROR}
        assert len(refusals) == 1  # once per run of refusals, not once per poll
        assert polled <= 3, f"{polled} polls in 1 s: the refused replica does not back off"

    asyncio.run(scenario())

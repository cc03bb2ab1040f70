"""A replica's routing-table polls carry the serving token, and a replica the controller
refuses for want of it says so as an error; a replica takes only tables signed with the key
derived from that token, from the controller and from the store alike, and keeps what it holds
otherwise (``serving.table_source``, ``serving.signed_table``; docs/security.md)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import httpx
import pytest

from serving import table_poll_failures
from serving.signed_table import read_stored
from serving.table_source import TableSource
from tests.unit.test_serving_table_source import wait_for as polled
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState
from wire.table_signature import SIGNATURE_HEADER, canonical_json, sign, table_key

TOKEN = "serving-token-0123456789"
TABLE = RoutingTable(
    revision=3, epoch="e", models={"a": ModelEntry(name="a", default_version=None)}
)


def signed_answer(table: RoutingTable, token: str | None) -> httpx.Response:
    """The controller's 200: the table's canonical JSON, signed with ``token``'s key if any."""
    body = canonical_json(table.model_dump(mode="json"))
    headers = {SIGNATURE_HEADER: sign(body, table_key(token))} if token else {}
    return httpx.Response(200, content=body, headers=headers)


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
            return signed_answer(TABLE, TOKEN)
        await asyncio.sleep(0.01)
        return httpx.Response(204)


async def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    await polled(predicate, timeout)


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


def live_table(revision: int, source: str) -> RoutingTable:
    version = VersionEntry(version="1", state=VersionState.LIVE, source=source,
                           mlmodel_digest="0" * 64)
    model = ModelEntry(name="m", default_version="1", versions={"1": version})
    return RoutingTable(revision=revision, epoch="e", models={"m": model})


GOOD, EVIL = "models:/m/1", "s3://attacker/model"


class ScriptedController:
    """Answers each poll with the next of its answers (then 204s): a stand-in for whoever
    answers at the controller's URL."""

    def __init__(self, *answers: Callable[[], httpx.Response]) -> None:
        self.answers = list(answers)
        self.polls = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.polls += 1
        if self.answers:
            return self.answers.pop(0)()
        await asyncio.sleep(0.01)
        return httpx.Response(204)


@pytest.mark.parametrize(
    ("bad", "says"),
    [(lambda: signed_answer(live_table(4, EVIL), "another-token"), "does not match"),
     (lambda: signed_answer(live_table(4, EVIL), None), "carries no signature"),
     # A new epoch is taken whatever its revision: it must be signed all the same.
     (lambda: signed_answer(live_table(1, EVIL).model_copy(update={"epoch": "new"}), None),
      "carries no signature")],
    ids=["forged", "unsigned", "unsigned-new-epoch"],
)
def test_a_forged_or_unsigned_table_is_refused_and_the_held_one_kept(
    bad: Callable[[], httpx.Response], says: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(table_poll_failures, "BACKOFF_FIRST_S", 0.02)
    held, later = live_table(3, GOOD), live_table(5, GOOD)
    taken: list[RoutingTable] = []

    async def scenario() -> None:
        controller = ScriptedController(
            lambda: signed_answer(held, TOKEN), bad, bad, lambda: signed_answer(later, TOKEN)
        )
        source = TableSource("http://controller", poll_timeout_s=0.05,
                             transport=httpx.MockTransport(controller), token=TOKEN)
        original = source.take

        async def take(table: RoutingTable) -> bool:
            taken.append(table)
            return await original(table)

        source.take = take  # type: ignore[method-assign]
        with caplog.at_level(logging.DEBUG, logger="serving.table_source"):
            await source.start(wait_s=2)
            try:
                await wait_for(lambda: source.table == later)
            finally:
                await source.stop()

    asyncio.run(scenario())
    # The forged table never reached the replica's tables, not even for a moment.
    assert taken == [held, later]
    assert all(EVIL not in r.getMessage() for r in caplog.records)
    refusals = [r for r in caplog.records if says in r.getMessage()]
    assert [r.levelno for r in refusals if r.levelno >= logging.WARNING] == [logging.WARNING]
    line = refusals[0].getMessage()
    assert "\n" not in line and "keeps revision 3" in line
    for secret in (TOKEN, table_key(TOKEN).hex(), "v1="):
        assert secret not in line


class MemoryStore:
    def __init__(self, raw: str | None = None) -> None:
        self.raw = raw

    def read(self) -> str | None:
        return self.raw

    def write(self, table_json: str) -> None:
        self.raw = table_json


def envelope(table: RoutingTable, token: str | None) -> dict[str, object]:
    body = canonical_json(table.model_dump(mode="json"))
    return {"signature": sign(body, table_key(token)) if token else None,
            "table": table.model_dump(mode="json")}


def stored_table(store: MemoryStore) -> RoutingTable | None:
    """The table the store holds, if it verifies with the serving token's key."""
    try:
        return read_stored(store.raw or "", table_key(TOKEN)).table
    except ValueError:
        return None


def tampered() -> str:
    copy = envelope(live_table(50, GOOD), TOKEN)
    copy["table"]["models"]["m"]["versions"]["1"]["source"] = EVIL  # type: ignore[index]
    return json.dumps(copy)


@pytest.mark.parametrize(
    ("stored", "says"),
    [(tampered, "does not match"),
     (lambda: json.dumps(envelope(live_table(50, EVIL), "another-token")), "does not match"),
     (lambda: json.dumps(envelope(live_table(50, EVIL), None)), "carries no signature"),
     # A bare table, as replicas before signatures stored it.
     (lambda: live_table(50, EVIL).model_dump_json(), "carries no signature")],
    ids=["tampered", "other-key", "unsigned", "bare"],
)
def test_a_stored_copy_that_does_not_verify_is_not_restored_and_is_overwritten(
    stored: Callable[[], str], says: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(table_poll_failures, "BACKOFF_FIRST_S", 0.02)
    fresh = live_table(3, GOOD)

    async def scenario() -> MemoryStore:
        store = MemoryStore(stored())
        down = ScriptedController(*[_connect_error] * 3, lambda: signed_answer(fresh, TOKEN))
        source = TableSource("http://controller", poll_timeout_s=0.05, store=store,
                             transport=httpx.MockTransport(down), token=TOKEN)
        with caplog.at_level(logging.WARNING, logger="serving.table_source"):
            await source.start()
            try:
                # Started while the controller is down: nothing restored, nothing served.
                assert source.table is None
                await wait_for(lambda: source.table == fresh)
                # The copy above it (revision 50) is replaced, not kept as "newer".
                await wait_for(lambda: stored_table(store) == fresh)
            finally:
                await source.stop()
        return store

    asyncio.run(scenario())
    ignored = [r.getMessage() for r in caplog.records if "stored routing table" in r.getMessage()]
    assert len(ignored) == 1 and says in ignored[0]


def test_a_signed_stored_copy_is_restored_while_the_controller_is_down() -> None:
    async def scenario() -> None:
        kept = live_table(7, GOOD)
        store = MemoryStore(json.dumps(envelope(kept, TOKEN)))
        source = TableSource("http://controller", poll_timeout_s=0.05, store=store,
                             transport=httpx.MockTransport(_down), token=TOKEN)
        await source.start()
        try:
            assert source.table == kept
        finally:
            await source.stop()

    asyncio.run(scenario())


def test_the_copy_stored_keeps_fields_this_replica_does_not_know_and_still_verifies() -> None:
    # A controller of a later release adds an optional field: the replica stores what was
    # signed, so the next replica (of that release or this) verifies it.
    document = live_table(2, GOOD).model_dump(mode="json")
    document["models"]["m"]["newer_field"] = {"b": 1, "a": [0.5, "\u00e9"]}
    body = json.dumps(document, indent=2).encode()  # formatting is not part of the signature
    key = table_key(TOKEN)
    signature = sign(canonical_json(json.loads(body)), key)

    async def scenario() -> MemoryStore:
        store = MemoryStore()
        controller = ScriptedController(
            lambda: httpx.Response(200, content=body, headers={SIGNATURE_HEADER: signature})
        )
        source = TableSource("http://controller", poll_timeout_s=0.05, store=store,
                             transport=httpx.MockTransport(controller), token=TOKEN)
        await source.start(wait_s=2)
        try:
            await wait_for(lambda: store.raw is not None)
        finally:
            await source.stop()
        return store

    store = asyncio.run(scenario())
    restored = read_stored(store.raw or "", key)
    assert restored.table == live_table(2, GOOD)
    assert json.loads(restored.canonical)["models"]["m"]["newer_field"]["a"] == [0.5, "\u00e9"]


async def _down(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("controller down", request=request)


def _connect_error() -> httpx.Response:
    raise httpx.ConnectError("controller down")

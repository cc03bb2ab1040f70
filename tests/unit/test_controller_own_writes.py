"""The controller's own registry writes do not come back as work (issue 20).

The memory (``controller.own_writes``) with an injected clock; the write-back remembering each
write before it is made; and the webhook route of a real app (its registry a real address where
nothing listens, its store a fresh SQLite): a delivery reporting one of the controller's writes
is acknowledged and counted but not handed to the worker, anything else is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from controller.app import create_app
from controller.database import make_engine, migrate
from controller.exceptions import RegistryUnavailable
from controller.own_writes import OwnWrites, RememberingWriter, Write, alias_set, tag_set
from controller.reconciler import Reconciler
from controller.settings import ControllerSettings
from controller.store import Store
from sigserve.ports import free_port
from tests.unit.test_controller_reconciler import ENV, FakeRegistry, sig

SECRET = "hook-secret-0123456789"
LIVE = tag_set("m", "1", "sigserve.state", "live")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# The memory.


def test_a_write_explains_one_delivery_and_only_its_own() -> None:
    memory = OwnWrites()
    memory.remember(LIVE)
    assert not memory.consume(tag_set("m", "1", "sigserve.state", "quarantined"))
    assert not memory.consume(tag_set("m", "2", "sigserve.state", "live"))
    assert not memory.consume(alias_set("m", "sigserve.state", "1"))
    assert memory.consume(LIVE)
    assert not memory.consume(LIVE)  # a second delivery of it is someone's write


def test_the_same_write_made_twice_explains_two_deliveries() -> None:
    memory = OwnWrites()
    memory.remember(LIVE)
    memory.remember(LIVE)
    assert memory.consume(LIVE) and memory.consume(LIVE)
    assert not memory.consume(LIVE)


def test_a_write_is_forgotten_after_its_ttl() -> None:
    clock = Clock()
    memory = OwnWrites(ttl_s=300, clock=clock)
    memory.remember(LIVE)
    clock.now += 299
    memory.remember(alias_set("m", "serving", "1"))
    assert memory.consume(LIVE)
    memory.remember(LIVE)
    clock.now += 300.5
    assert not memory.consume(LIVE)
    assert len(memory) == 0  # the alias expired as well, nothing is kept past its time


def test_the_memory_is_capped_and_forgets_the_oldest_first() -> None:
    memory = OwnWrites(max_entries=3)
    writes = [tag_set("m", str(v), "sigserve.state", "live") for v in range(5)]
    for write in writes:
        memory.remember(write)
    assert len(memory) == 3
    assert [memory.consume(w) for w in writes] == [False, False, True, True, True]


class Registry:
    """A writer that, like a fast MLflow, delivers the webhook before the call returns."""

    def __init__(self, memory: OwnWrites, *, fail: bool = False) -> None:
        self.memory = memory
        self.fail = fail
        self.recognised: list[bool] = []

    def _deliver(self, write: Write) -> None:
        if self.fail:
            raise RegistryUnavailable("the registry is down")
        self.recognised.append(self.memory.consume(write))

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._deliver(tag_set(name, version, key, value))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._deliver(alias_set(name, alias, version))


def test_a_write_is_remembered_before_it_is_made() -> None:
    memory = OwnWrites()
    registry = Registry(memory)
    writer = RememberingWriter(registry, memory)
    writer.set_version_tag("m", "1", "sigserve.state", "live")
    writer.set_alias("m", "serving", "1")
    assert registry.recognised == [True, True]


def test_a_write_that_failed_is_not_remembered() -> None:
    memory = OwnWrites()
    writer = RememberingWriter(Registry(memory, fail=True), memory)
    with pytest.raises(RegistryUnavailable):
        writer.set_version_tag("m", "1", "sigserve.state", "live")
    with pytest.raises(RegistryUnavailable):
        writer.set_alias("m", "serving", "1")
    assert len(memory) == 0


def test_writes_that_went_through_are_handed_to_the_resync_once_the_latest_per_tag() -> None:
    memory = OwnWrites()
    writer = RememberingWriter(Registry(memory), memory)
    writer.set_version_tag("m", "1", "sigserve.state", "pending")
    writer.set_version_tag("m", "1", "sigserve.state", "live")
    writer.set_alias("m", "serving", "1")
    writer.set_version_tag("n", "2", "sigserve.state", "live")
    assert memory.take_made("m") == [LIVE, alias_set("m", "serving", "1")]
    assert memory.take_made("m") == []  # taken once
    failing = RememberingWriter(Registry(memory, fail=True), memory)
    with pytest.raises(RegistryUnavailable):
        failing.set_alias("n", "serving", "2")  # never in the registry: not the resync's
    assert memory.take_made("n") == [tag_set("n", "2", "sigserve.state", "live")]


def test_every_write_of_the_write_back_is_remembered(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    store = Store(engine)
    memory = OwnWrites()
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt")),
                                       "2": ("models:/m-b", sig("text"))})
    outcome = Reconciler(store, registry, ENV, own_writes=memory).reconcile("m")
    assert outcome.write_back is not None
    outcome.write_back()
    assert len(registry.writes) == 7  # three tags on each version, and the alias
    for write in registry.writes:
        kind, *rest = write
        delivered = tag_set("m", *rest) if kind == "tag" else alias_set("m", *rest)
        assert memory.consume(delivered), write
    assert len(memory) == 0


# The webhook route.


@pytest.fixture()
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = ControllerSettings(
        home=tmp_path,
        admin_token="admin-token-0123456789",
        webhook_secret=SECRET,
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        resync_interval_s=3600,
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture()
def enqueued(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What the route hands to the worker (name, actor); the worker itself is not run on it,
    its registry being nowhere."""
    handed: list[tuple[str, str]] = []
    worker = client.app.state.services.worker  # type: ignore[attr-defined]
    monkeypatch.setattr(worker, "enqueue", lambda name, actor="resync": handed.append(
        (name, actor)))
    return handed


def remember(client: TestClient, write: Write) -> None:
    client.app.state.services.own_writes.remember(write)  # type: ignore[attr-defined]


def post(client: TestClient, event: str, data: dict[str, object], delivery_id: str) -> str:
    entity, action = event.rsplit(".", 1)
    raw = json.dumps({"entity": entity, "action": action, "timestamp": "now", "data": data})
    ts = str(int(time.time()))
    r = client.post("/webhooks/mlflow", content=raw.encode(), headers={
        "content-type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": ts,
        "X-MLflow-Signature": _generate_hmac_signature(SECRET, delivery_id, ts, raw),
    })
    assert r.status_code == 200, r.text
    status: str = r.json()["status"]
    return status


def counted(client: TestClient, result: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'sigserve_webhooks_total{{result="{result}"}} '):
            return float(line.split()[-1])
    return 0.0


TAG = "model_version_tag.set"
ALIAS = "model_version_alias.created"


def test_deliveries_of_the_controllers_own_tag_and_alias_are_not_enqueued(
    client: TestClient, enqueued: list[tuple[str, str]]
) -> None:
    remember(client, LIVE)
    remember(client, alias_set("m", "serving", "1"))
    tag = {"name": "m", "version": "1", "key": "sigserve.state", "value": "live"}
    assert post(client, TAG, tag, "d-tag") == "own_write"
    assert post(client, ALIAS, {"name": "m", "alias": "serving", "version": "1"},
                "d-alias") == "own_write"
    assert enqueued == []
    assert counted(client, "own_write") == 2
    assert counted(client, "accepted") == 0
    # Recorded as a delivery: MLflow's retry of one is a duplicate, and uses up nothing.
    assert post(client, TAG, tag, "d-tag") == "duplicate"
    assert enqueued == []


def test_a_persons_writes_are_enqueued(
    client: TestClient, enqueued: list[tuple[str, str]]
) -> None:
    remember(client, LIVE)
    remember(client, alias_set("m", "serving", "1"))
    # Another value of the same tag, the alias moved elsewhere, a tag deleted, another model.
    assert post(client, TAG, {"name": "m", "version": "1", "key": "sigserve.state",
                              "value": "quarantined"}, "d-1") == "accepted"
    assert post(client, ALIAS, {"name": "m", "alias": "serving", "version": "2"},
                "d-2") == "accepted"
    assert post(client, "model_version_tag.deleted",
                {"name": "m", "version": "1", "key": "sigserve.state"}, "d-3") == "accepted"
    assert post(client, TAG, {"name": "other", "version": "1", "key": "sigserve.state",
                              "value": "live"}, "d-4") == "accepted"
    assert enqueued == [("m", "webhook:d-1"), ("m", "webhook:d-2"), ("m", "webhook:d-3"),
                        ("other", "webhook:d-4")]
    assert counted(client, "own_write") == 0


def test_the_same_value_delivered_again_after_its_write_was_explained_is_enqueued(
    client: TestClient, enqueued: list[tuple[str, str]]
) -> None:
    remember(client, LIVE)
    tag = {"name": "m", "version": "1", "key": "sigserve.state", "value": "live"}
    assert post(client, TAG, tag, "d-ours") == "own_write"
    # A person setting the value the controller wrote: a delivery of its own (another id).
    assert post(client, TAG, tag, "d-theirs") == "accepted"
    assert enqueued == [("m", "webhook:d-theirs")]


def test_a_tag_value_too_long_to_be_ours_is_accepted_and_enqueued(
    client: TestClient, enqueued: list[tuple[str, str]]
) -> None:
    remember(client, tag_set("m", "1", "note", "x" * 2000))
    assert post(client, TAG, {"name": "m", "version": "1", "key": "note", "value": "x" * 2000},
                "d-long") == "accepted"
    assert post(client, TAG, {"name": "m", "version": "1", "key": ["not", "a", "key"],
                              "value": {"no": 1}}, "d-odd") == "accepted"
    assert enqueued == [("m", "webhook:d-long"), ("m", "webhook:d-odd")]

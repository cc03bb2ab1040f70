"""The controller's metrics and log lines, on the worker with a fake registry and a real store.

One webhook-driven pass over a model of three versions (the contract, a compatible one and one
that breaks it) must count its decisions by state and policy, keep the versions gauge equal to
the table, time the publish, observe registration -> live for the two live versions only, and
log a trail a person can follow: the webhook's delivery id on the decisions and on the publish
that carried them, with the revision and what it changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    PERMISSION_DENIED,
    RESOURCE_DOES_NOT_EXIST,
)
from prometheus_client import generate_latest

from controller.broadcaster import TableBroadcaster
from controller.database import make_engine, migrate
from controller.decision_log import DecisionLog, ObservedStore
from controller.exceptions import RegisteredModelGone, RegistryRefused, RegistryUnavailable
from controller.metrics import Metrics
from controller.publisher import table_gauges
from controller.reconciler import Reconciler
from controller.registry import ObservedVersion, Registry
from controller.worker import Worker
from tests.unit.test_controller_reconciler import ENV, FakeRegistry, sig
from wire import logs
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState


class Registered(FakeRegistry):
    """The fake registry, with each version's creation time (ms) as MLflow reports it."""

    created_ms: dict[str, int]

    def versions(self, name: str) -> list[ObservedVersion]:
        return [ObservedVersion(v.version, v.status, v.source, v.tags,
                                created_at=self.created_ms.get(v.version))
                for v in super().versions(name)]


def sample(metrics: Metrics, line: str) -> float:
    for text in generate_latest(metrics.registry).decode().splitlines():
        if text.startswith(line + " "):
            return float(text.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line}")


def reconciled(metrics: Metrics) -> float:
    """Passes the worker finished, whatever their outcome."""
    return sample(metrics, "sigserve_reconcile_seconds_count")


async def until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Poll ``condition`` on the event loop (the worker runs there) until true or the deadline."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within_s} s")
        await asyncio.sleep(0.01)


@pytest.fixture()
def stack(tmp_path: Path) -> tuple[Worker, Metrics, TableBroadcaster, Registered]:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    metrics = Metrics.create()
    store = ObservedStore(engine, decisions=DecisionLog(metrics))
    registry = Registered(versions_={"1": ("models:/m-a", sig("prompt")),
                                     "2": ("models:/m-b", sig("prompt")),
                                     "3": ("models:/m-c", sig("text"))})
    registry.created_ms = {}
    broadcaster = TableBroadcaster(on_new=table_gauges(metrics))
    worker = Worker(Reconciler(store, registry, ENV, write_back=False), store, registry,
                    broadcaster, metrics, resync_interval_s=3600, retry_initial_s=0.05,
                    retry_max_s=0.1)
    return worker, metrics, broadcaster, registry


def records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


def test_one_webhook_pass_is_counted_and_logged_from_delivery_to_revision(
    stack: tuple[Worker, Metrics, TableBroadcaster, Registered],
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker, metrics, broadcaster, registry = stack
    # Registered 30 s ago by the registry's clock: the histogram sees ~30 s.
    registry.created_ms = {v: int((time.time() - 30) * 1000) for v in ("1", "2", "3")}
    caplog.handler.addFilter(logs.TrailFilter())  # the trail fields, as wire.logs adds them
    caplog.set_level(logging.INFO)

    async def go() -> None:
        await worker.prime(already_published=True)  # an empty table, revision 1
        worker.enqueue("m", "webhook:d-1")
        worker.enqueue("m", "webhook:d-2")  # coalesced: the pass names both
        task = asyncio.create_task(worker.run())

        def published() -> bool:
            table = broadcaster.current
            return table is not None and "m" in table.models

        await until(published)
        task.cancel()

    asyncio.run(go())
    table = broadcaster.current
    assert table is not None
    states = {v: e.state for v, e in table.models["m"].versions.items()}
    assert states == {"1": VersionState.LIVE, "2": VersionState.LIVE,
                      "3": VersionState.QUARANTINED}

    assert sample(metrics, 'sigserve_decisions_total{policy="backward",state="live"}') == 2
    assert sample(metrics, 'sigserve_decisions_total{policy="backward",state="quarantined"}') == 1
    assert sample(metrics, 'sigserve_decisions_total{policy="exact",state="live"}') == 0
    assert sample(metrics, 'sigserve_model_versions{state="live"}') == 2
    assert sample(metrics, 'sigserve_model_versions{state="quarantined"}') == 1
    assert sample(metrics, 'sigserve_model_versions{state="pending"}') == 0
    assert sample(metrics, "sigserve_routing_table_revision") == table.revision
    assert sample(metrics, "sigserve_publish_seconds_count") >= 2  # priming, then the change
    assert sample(metrics, "sigserve_registration_to_live_seconds_count") == 2
    went_live = sample(metrics, "sigserve_registration_to_live_seconds_sum")
    assert 2 * 29 < went_live < 2 * 60

    decisions = records(caplog, "decision")
    assert {(r.version, r.state) for r in decisions} == {  # type: ignore[attr-defined]
        ("1", "live"), ("2", "live"), ("3", "quarantined")}
    for r in decisions:
        assert r.delivery_ids == ["d-1", "d-2"]  # type: ignore[attr-defined]
        assert (r.model, r.policy, r.actor) == ("m", "backward", "webhook:d-2")  # type: ignore[attr-defined]
    [published] = [r for r in records(caplog, "publish") if "m/1=live" in r.changes]  # type: ignore[attr-defined]
    assert published.revision == table.revision  # type: ignore[attr-defined]
    assert published.delivery_ids == ["d-1", "d-2"]  # type: ignore[attr-defined]
    assert set(published.changes) == {"m@default=1", "m/1=live", "m/2=live",  # type: ignore[attr-defined]
                                      "m/3=quarantined"}


def test_a_pass_that_changes_nothing_counts_no_decision(
    stack: tuple[Worker, Metrics, TableBroadcaster, Registered],
) -> None:
    worker, metrics, _, _ = stack

    async def go() -> None:
        await worker.prime(already_published=True)
        task = asyncio.create_task(worker.run())
        for passes, actor in enumerate(("webhook:a", "resync", "webhook:b"), start=1):
            worker.enqueue("m", actor)
            # One pass at a time: each must be over before the next is asked for, or the
            # queue would coalesce them into one.
            await until(lambda: reconciled(metrics) == passes)  # noqa: B023 (awaited here)
        task.cancel()

    asyncio.run(go())
    assert sample(metrics, 'sigserve_decisions_total{policy="backward",state="live"}') == 2
    assert sample(metrics, "sigserve_registration_to_live_seconds_count") == 0  # no created_at


def test_the_versions_gauge_follows_any_table_the_controller_holds() -> None:
    metrics = Metrics.create()
    broadcaster = TableBroadcaster(on_new=table_gauges(metrics))

    def table(revision: int, *states: VersionState) -> RoutingTable:
        versions = {str(i): VersionEntry(version=str(i), state=s) for i, s in enumerate(states)}
        return RoutingTable(revision=revision, epoch="e",
                            models={"m": ModelEntry(name="m", default_version=None,
                                                    versions=versions)})

    # A table loaded from another controller's publish or a catch-up goes through the same
    # broadcaster: the gauges are right whichever way it came, and an older table changes none.
    asyncio.run(broadcaster.offer(table(3, VersionState.LIVE, VersionState.PENDING)))
    assert sample(metrics, 'sigserve_model_versions{state="pending"}') == 1
    asyncio.run(broadcaster.offer(table(4, VersionState.LIVE, VersionState.QUARANTINED)))
    asyncio.run(broadcaster.offer(table(2, VersionState.PENDING)))
    assert sample(metrics, 'sigserve_model_versions{state="pending"}') == 0
    assert sample(metrics, 'sigserve_model_versions{state="quarantined"}') == 1
    assert sample(metrics, "sigserve_routing_table_revision") == 4


@pytest.mark.parametrize(
    ("error", "raised", "kind"),
    [
        (MlflowException("gone", error_code=RESOURCE_DOES_NOT_EXIST), RegisteredModelGone,
         "gone"),
        (MlflowException("no", error_code=PERMISSION_DENIED), RegistryRefused, "permanent"),
        (MlflowException("boom", error_code=INTERNAL_ERROR), RegistryUnavailable, "temporary"),
        (ConnectionRefusedError("refused"), RegistryUnavailable, "temporary"),
    ],
)
def test_registry_errors_are_counted_by_kind(
    error: Exception, raised: type[Exception], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    metrics = Metrics.create()
    registry = Registry("http://127.0.0.1:9",
                        on_error=lambda k: metrics.registry_errors.labels(k).inc())

    def fail() -> Any:
        raise error

    monkeypatch.setattr(registry._client, "get_registered_model", lambda name: fail())
    with pytest.raises(raised):
        registry.model("m")
    counts = {k: sample(metrics, f'sigserve_registry_errors_total{{kind="{k}"}}')
              for k in ("temporary", "permanent", "gone")}
    assert counts == {k: (1.0 if k == kind else 0.0) for k in counts}


def test_log_lines_are_json_in_files_and_text_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    log = logging.getLogger("sigserve.test.logs")
    path = tmp_path / "c.log"
    logs.configure("controller", path=path, loggers=("sigserve.test.logs",))

    def in_a_thread() -> None:
        log.info("decided %s", "m", extra={"event": "decision", "version": "3"})

    async def go() -> None:
        with logs.trail(delivery_ids=["d-9"], model="m"):
            await asyncio.to_thread(in_a_thread)  # the trail follows the work

    asyncio.run(go())
    [line] = path.read_text().splitlines()
    record = json.loads(line)
    assert {k: record[k] for k in ("level", "logger", "message", "service", "event", "model",
                                   "version", "delivery_ids")} == {
        "level": "INFO", "logger": "sigserve.test.logs", "message": "decided m",
        "service": "controller", "event": "decision", "model": "m", "version": "3",
        "delivery_ids": ["d-9"]}
    assert record["time"].endswith("+00:00")

    class Terminal:
        lines: list[str] = []

        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> None:
            self.lines.append(text)

        def flush(self) -> None:
            pass

    terminal = Terminal()
    logs.configure("controller", stream=terminal, loggers=("sigserve.test.logs",))  # type: ignore[arg-type]
    with logs.trail(delivery_ids=["d-9"]):
        log.info("published revision %d", 7, extra={"revision": 7})
    text = "".join(terminal.lines)
    assert "INFO sigserve.test.logs: published revision 7 [delivery_ids=d-9 revision=7]" in text
    assert not text.lstrip().startswith("{")
    assert len(log.handlers) == 1  # configured again: replaced, not added

    monkeypatch.setenv(logs.FORMAT_ENV, "json")
    assert logs.chosen_format(terminal) == "json"  # type: ignore[arg-type]
    monkeypatch.setenv(logs.FORMAT_ENV, "yaml")
    with pytest.raises(ValueError, match="SIGSERVE_LOG_FORMAT"):
        logs.chosen_format(None)

"""What serving records, without Ray: the API's labels and statuses, batch sizes, what
``ReplicaMetrics`` hands to Ray (on stand-in metric objects), the "took revision" line, the
changes a table makes, and the local stack's human-readable view of the JSON logs."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from serving import metrics as serving_metrics
from serving.api import create_app
from serving.loader import LoadedModel
from serving.metrics import ReplicaMetrics
from serving.model_host import ModelHost
from serving.resolve import Target
from serving.table_source import TableSource
from sigserve.log_follow import StackLog, render
from tests.unit.test_serving_api import TABLE, Controller, EchoModel
from wire.routing_table import CHANGES_SHOWN, ModelEntry, RoutingTable, VersionEntry, changes
from wire.routing_table import VersionState as S


class Recording:
    """A ``serving.recorder.Recorder`` that keeps what it was told."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int]] = []
        self.batches: list[tuple[str, int]] = []
        self.started = self.stopped = False

    def request(self, model: str, version: str, status: int, seconds: float) -> None:
        assert 0 <= seconds < 30
        self.requests.append((model, version, status))

    def batch(self, model_id: str, records: int) -> None:
        self.batches.append((model_id, records))

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


class RecordedEcho(ModelHost):
    """The real model host with echo models, telling ``recorder`` of its batches."""

    def __init__(self, recorder: Recording) -> None:
        self.calls: list[Any] = []

        async def get_model(target: Target) -> LoadedModel:
            return LoadedModel(EchoModel(target, self.calls), Path("/nonexistent/sigserve-test"))

        super().__init__(get_model, on_batch=recorder.batch)


def test_each_request_is_recorded_with_the_tables_model_version_and_status() -> None:
    controller = Controller()
    controller.table = TABLE
    source = TableSource("http://controller", transport=httpx.MockTransport(controller))
    recorder = Recording()
    app = create_app(source, RecordedEcho(recorder), startup_wait_s=2, recorder=recorder)
    client = TestClient(app, raise_server_exceptions=False)
    with client:
        assert recorder.started
        sent = [
            ("/models/echo/serve", {"prompt": "a"}, {}, 200),
            ("/models/echo/serve", {"prompt": "a"}, {"serve_multiplexed_model_id": "2"}, 200),
            ("/models/echo/versions/2/serve", [{"prompt": "a"}, {"prompt": "b"}], {}, 200),
            ("/models/echo/versions/3/serve", {"prompt": "a"}, {}, 409),
            ("/models/echo/versions/4/serve", {"prompt": "a"}, {}, 503),
            ("/models/echo/versions/99/serve", {"prompt": "a"}, {}, 404),
            ("/models/nope/serve", {"prompt": "a"}, {}, 404),
            ("/models/echo/serve", {"text": "a"}, {}, 422),
            ("/models/echo/serve", {"prompt": "a"}, {"serve_multiplexed_model_id": "x/2"}, 400),
            ("/models/echo/invocations", {"dataframe_records": [{"prompt": "a"}]}, {}, 200),
        ]
        for path, body, headers, status in sent:
            assert client.post(path, json=body, headers=headers).status_code == status, path
        client.get("/models")  # not an inference request: not recorded
    assert recorder.stopped
    assert recorder.requests == [
        ("echo", "1", 200), ("echo", "2", 200), ("echo", "2", 200), ("echo", "3", 409),
        ("echo", "4", 503), ("echo", "", 404), ("", "", 404), ("echo", "1", 422),
        ("echo", "", 400), ("echo", "1", 200),
    ]
    # One predict call per request here (sent one after another), with its records: /serve's
    # and /invocations' alike, since plain records on /invocations are batched as /serve's are.
    assert sorted(r for _, r in recorder.batches) == [1, 1, 1, 2]
    assert {m.rsplit("@", 1)[0] for m, _ in recorder.batches} == {"echo/1", "echo/2"}


class FakeMetric:
    """Stands for a Ray metric: keeps the calls."""

    made: dict[str, FakeMetric] = {}

    def __init__(self, name: str, description: str = "", tag_keys: Any = None) -> None:
        self.tag_keys = tuple(tag_keys or ())
        self.calls: list[tuple[str, float, dict[str, str] | None]] = []
        FakeMetric.made[name] = self

    def inc(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("inc", value, tags))

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        assert set(tags or {}) == set(self.tag_keys)
        self.calls.append(("set", value, tags))

    def last(self, **tags: str) -> float:
        return [v for _, v, t in self.calls if t == tags][-1]


class Held:
    def __init__(self, table: RoutingTable | None, taken_at: float | None) -> None:
        self.table, self.taken_at = table, taken_at


def test_replica_metrics_batch_the_request_path_and_hand_it_to_ray_once_a_flush(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeMetric.made = made = {}
    monkeypatch.setattr(serving_metrics.serve_metrics, "Counter", FakeMetric)
    monkeypatch.setattr(serving_metrics.serve_metrics, "Gauge", FakeMetric)
    echo1 = {"model": "echo", "version": "1"}

    async def go() -> None:
        m = ReplicaMetrics(flush_s=3600)
        m.watch(Held(TABLE, time.monotonic() - 5))
        await m.start()
        for seconds in (0.002, 0.02, 0.03):
            m.request("echo", "1", 200, seconds)
        m.request("echo", "1", 422, 0.0005)
        m.request("echo", "3", 409, 0.001)
        m.batch("echo/1@0123456789abcdef", 3)
        m.batch("echo/1@0123456789abcdef", 1)
        m.loaded("echo/2@0123456789abcdef", 1.5, ok=True)
        m.loaded("echo/3@0123456789abcdef", 0.2, ok=False)
        # Nothing reaches Ray on the request path.
        assert made["sigserve_requests"].calls == []
        assert made["sigserve_request_seconds_count"].calls == []
        thread = threading.Thread(target=m.evicted, args=("echo/2@0123456789abcdef",))
        thread.start()
        thread.join()
        # Recorded on the event loop by a callback the thread scheduled; the loop runs its
        # callbacks in order, so once this later one has run, so has the eviction's.
        after_eviction = asyncio.Event()
        asyncio.get_running_loop().call_soon(after_eviction.set)
        await asyncio.wait_for(after_eviction.wait(), 5)
        m.flush()
        m.request("echo", "1", 200, 7.0)
        await m.stop()  # flushes what is left

    asyncio.run(go())
    assert made["sigserve_requests"].calls == [
        ("inc", 3, {**echo1, "status": "200"}),
        ("inc", 1, {**echo1, "status": "422"}),
        ("inc", 1, {"model": "echo", "version": "3", "status": "409"}),
        ("inc", 1, {**echo1, "status": "200"}),
    ]
    # The latency histogram: cumulative buckets, count and exact sum per model and version,
    # across flushes.
    count, total = made["sigserve_request_seconds_count"], made["sigserve_request_seconds_sum"]
    assert [v for _, v, t in count.calls if t == echo1] == [4, 5]
    assert total.last(**echo1) == pytest.approx(0.002 + 0.02 + 0.03 + 0.0005 + 7.0)
    buckets = made["sigserve_request_seconds_bucket"]
    assert buckets.last(**echo1, le="0.001") == 1
    assert buckets.last(**echo1, le="0.0025") == 2
    assert buckets.last(**echo1, le="0.025") == 3
    assert buckets.last(**echo1, le="5.0") == 4
    assert buckets.last(**echo1, le="10.0") == 5
    assert buckets.last(**echo1, le="+Inf") == 5
    assert made["sigserve_batch_size_count"].last(**echo1) == 2
    assert made["sigserve_batch_size_sum"].last(**echo1) == 4
    assert made["sigserve_batch_size_bucket"].last(**echo1, le="1.0") == 1
    assert made["sigserve_batch_size_bucket"].last(**echo1, le="2.0") == 1
    assert made["sigserve_batch_size_bucket"].last(**echo1, le="4.0") == 2
    assert made["sigserve_model_loads"].calls == [
        ("inc", 1, {"model": "echo", "version": "2", "result": "ok"}),
        ("inc", 1, {"model": "echo", "version": "3", "result": "failed"}),
    ]
    assert made["sigserve_model_load_seconds_sum"].last(model="echo", version="2") == 1.5
    assert made["sigserve_model_evictions"].calls == [
        ("inc", 1, {"model": "echo", "version": "2"})]
    assert made["sigserve_replica_table_revision"].calls[-1] == ("set", TABLE.revision, None)
    age = made["sigserve_replica_table_age_seconds"].calls[-1][1]
    assert 4.9 < age < 30


def test_exported_names_follow_rays_naming() -> None:
    names = serving_metrics.exported_names()
    assert "ray_sigserve_requests_total" in names
    assert {"ray_sigserve_request_seconds_bucket", "ray_sigserve_request_seconds_count",
            "ray_sigserve_request_seconds_sum"} <= names
    assert "ray_sigserve_replica_table_revision" in names
    assert len(names) == sum(len(s.exported()) for s in serving_metrics.SPECS)


def table(revision: int, default: str | None, **states: S) -> RoutingTable:
    versions = {v: VersionEntry(version=v, state=s) for v, s in states.items()}
    return RoutingTable(revision=revision, epoch="e",
                        models={"m": ModelEntry(name="m", default_version=default,
                                                versions=versions)})


def test_changes_name_what_a_table_changes_for_serving() -> None:
    first = table(1, "1", **{"1": S.LIVE, "2": S.PENDING})
    second = table(2, "1", **{"1": S.LIVE, "2": S.LIVE, "3": S.QUARANTINED})
    third = table(3, "2", **{"2": S.LIVE, "3": S.QUARANTINED})
    assert changes(first, None) == ["m@default=1", "m/1=live", "m/2=pending"]
    assert changes(second, first) == ["m/2=live", "m/3=quarantined"]
    assert changes(third, second) == ["m@default=2", "m/1=removed"]
    assert changes(second, second) == []
    empty = RoutingTable(revision=5, epoch="e",
                         models={"n": ModelEntry(name="n", default_version=None)})
    assert changes(empty, None) == ["n=added"]
    many = table(4, None, **{str(i): S.LIVE for i in range(CHANGES_SHOWN + 5)})
    assert changes(many, None)[-1] == "+5 more"


def test_the_replica_logs_each_table_it_takes_with_what_it_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="serving.table_source")
    source = TableSource("http://controller")
    assert source.taken_at is None
    assert source.offer(table(1, "1", **{"1": S.LIVE}))
    assert source.offer(table(2, "1", **{"1": S.LIVE, "2": S.QUARANTINED}))
    assert not source.offer(table(2, "1", **{"1": S.LIVE}))
    taken = [r for r in caplog.records if getattr(r, "event", None) == "table_taken"]
    assert [(r.revision, r.changes) for r in taken] == [  # type: ignore[attr-defined]
        (1, ["m@default=1", "m/1=live"]), (2, ["m/2=quarantined"])]
    assert taken[1].getMessage() == "took revision 2 (1 models): m/2=quarantined"
    assert source.taken_at is not None


def test_the_local_stack_shows_the_trail_and_warnings_human_readably(tmp_path: Path) -> None:
    log, replica = tmp_path / "controller.log", tmp_path / "sigserve_sigserve_4jnnbto0.log"
    old = {"time": "2026-11-28T12:00:00+00:00", "level": "INFO", "event": "publish",
           "message": "published revision 1: old", "service": "controller"}
    log.write_text(json.dumps(old) + "\n")
    shown: list[tuple[str, str]] = []
    follow = StackLog(lambda: [p for p in (log, replica) if p.exists()],
                      lambda text, style: shown.append((text, style)))
    lines = [
        {"time": "2026-11-28T12:00:01+00:00", "level": "INFO", "event": "webhook",
         "message": "webhook model_version.created for m v2 (delivery d-1)",
         "service": "controller"},
        {"time": "2026-11-28T12:00:01+00:00", "level": "INFO", "event": "reconcile",
         "message": "reconciled m: changed", "service": "controller"},
        {"time": "2026-11-28T12:00:02+00:00", "level": "WARNING", "message": "MLflow is down",
         "service": "controller"},
        {"time": "2026-11-28T12:00:01+00:00", "level": "INFO", "event": "webhook",
         "mlflow_event": "model_version_tag.set", "message": "webhook model_version_tag.set",
         "service": "controller"},
    ]
    with log.open("a") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines) + '{"half": ')
    # The replica's own file, earlier in time than the warning: shown in time order.
    taken = {"level": "INFO", "event": "table_taken", "message": "took revision 2 (1 models): "
             "m/2=live", "service": "serving", "replica": "4jnnbto0",
             "time": "2026-11-28T12:00:01.500000+00:00"}
    replica.write_text(json.dumps(taken) + "\n")
    follow.poll()
    texts = [t.split(" ", 1)[1] for t, _ in shown]  # the time is local: not compared
    assert texts == [
        "controller  webhook model_version.created for m v2 (delivery d-1)",
        "serving 4jnn took revision 2 (1 models): m/2=live",
        "controller  MLflow is down",
    ]
    assert [s for _, s in shown] == ["", "", "yellow"]
    follow.poll()
    assert len(shown) == 3  # nothing twice; the half-written line waits for its end
    assert render("not json") is None and render("[1]") is None


def test_an_idle_versions_histograms_are_set_again_so_that_ray_keeps_exporting_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ray's agent drops a gauge not set for two report intervals: a version that got no request
    # since must still have its histograms, so each flush past ``refresh_s`` sets them again.
    FakeMetric.made = made = {}
    monkeypatch.setattr(serving_metrics.serve_metrics, "Counter", FakeMetric)
    monkeypatch.setattr(serving_metrics.serve_metrics, "Gauge", FakeMetric)
    echo1 = {"model": "echo", "version": "1"}
    clock = [1000.0]
    monkeypatch.setattr(serving_metrics.time, "monotonic", lambda: clock[0])
    m = ReplicaMetrics(flush_s=3600, refresh_s=5)
    m.request("echo", "1", 200, 0.02)
    m.batch("echo/1@0123456789abcdef", 3)
    m.loaded("echo/2@0123456789abcdef", 1.5, ok=True)
    m.flush()
    seconds, batches = made["sigserve_request_seconds_count"], made["sigserve_batch_size_sum"]
    loads = made["sigserve_model_load_seconds_bucket"]
    before = (len(seconds.calls), len(batches.calls), len(loads.calls))
    clock[0] += 4  # not yet
    m.flush()
    assert (len(seconds.calls), len(batches.calls), len(loads.calls)) == before
    clock[0] += 1.5
    m.flush()
    assert seconds.calls[before[0]:] == [("set", 1, echo1)]
    assert batches.calls[before[1]:] == [("set", 3, echo1)]
    assert [(v, t) for _, v, t in loads.calls[before[2]:]] == [
        (0 if float(le) < 1.5 else 1, {"model": "echo", "version": "2", "le": le})
        for le in [str(float(b)) for b in serving_metrics.LOAD_BUCKETS] + ["+Inf"]
    ]

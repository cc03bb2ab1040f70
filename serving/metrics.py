"""The serving replicas' metrics, recorded with ``ray.serve.metrics`` inside each replica.

Ray exports them on every node's metrics port (``ray start --metrics-export-port``, or
``ray.init(_metrics_export_port=...)`` for a local Ray: ``sigserve.stack.start_serving``),
in Prometheus' text format, with the prefix ``ray_`` and Ray Serve's own labels (``deployment``,
``replica``, ``application``). Each metric is named in ``SPECS``, from which both the Ray
objects (``Spec.create``, inside the replica only: Ray's metrics need its worker) and the names
Prometheus sees (``exported_names``, which the dashboard's test checks) are made.

The request path stays cheap (``docs/benchmarks.md``): a request costs one dictionary lookup and
a list append (``ReplicaMetrics.request``). Once a second a task on the replica's event loop
hands what gathered to Ray, in work that grows with the label sets, not with the requests: one
counter increment per (model, version, status), and the histograms' new totals.

The histograms are kept here, not by Ray: Ray's own histogram sends bucket counts to its metrics
agent, which records every observation again, one Python call each (and exports a ``_sum`` made
of bucket midpoints); at a few thousand requests a second that cost 8% of the fast path's
throughput on this 2-core machine. Here each histogram is cumulative bucket counts, a count and
an exact sum per label set, exported as three gauges named as Prometheus names a histogram's
series (``<name>_bucket{le=...}``, ``<name>_count``, ``<name>_sum``): ``rate`` and
``histogram_quantile`` read them as they read any histogram (a replica that restarts starts
again from 0, which ``rate`` takes as a counter reset). Ray's metrics agent forgets a gauge
that was not set for two report intervals (20 s by default; Ray 2.60's OpenTelemetry recorder),
so every histogram's gauges are set again every ``refresh_s`` (half a report interval), or an
idle version's histogram would vanish from ``/metrics`` 20 s after its last request.

Labels name the model and version as the routing table knows them: a request for a name or a
version the table lacks is counted with ``model=""`` / ``version=""``, so clients cannot grow
the label sets.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ray.serve import metrics as serve_metrics

from serving.model_ids import parse_model_id
from wire.routing_table import RoutingTable

logger = logging.getLogger(__name__)

# Ray's exporter puts this before every application metric's name.
RAY_PREFIX = "ray_"
FLUSH_S = 1.0

# Seconds for requests (the fast path answers a trivial model in ~1 ms, MiniLM in ~15 ms,
# batches under load in tens), seconds for loads (a pickle in 0.1 s, weights in tens of s),
# records per predict call (the batch size is 32 unless a model's tag says).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0)


@dataclass(frozen=True)
class Spec:
    name: str
    kind: Literal["counter", "histogram", "gauge"]
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    def exported(self) -> tuple[str, ...]:
        """The series names Prometheus scrapes for it."""
        base = RAY_PREFIX + self.name
        if self.kind == "counter":
            return (f"{base}_total",)
        if self.kind == "histogram":
            return (f"{base}_bucket", f"{base}_count", f"{base}_sum")
        return (base,)

    def create(self) -> Any:
        """The Ray metric (a ``Histogram`` of Ray gauges); only inside a replica."""
        tags: Any = self.tags or None  # Ray annotates tag_keys as a 1-tuple
        if self.kind == "counter":
            return serve_metrics.Counter(self.name, self.description, tag_keys=tags)
        if self.kind == "histogram":
            return Histogram(self)
        return serve_metrics.Gauge(self.name, self.description, tag_keys=tags)


@dataclass
class _Totals:
    buckets: list[int]
    count: int
    sum: float
    # Label dictionaries, built once: each bucket's (with ``le``), and the count's and sum's.
    bucket_tags: list[dict[str, str]]
    tags: dict[str, str]


class Histogram:
    """Cumulative bucket counts, count and exact sum per label set, exported as Ray gauges."""

    def __init__(self, spec: Spec) -> None:
        tags: Any = spec.tags or None
        with_le: Any = (*spec.tags, "le")
        self._boundaries = spec.boundaries
        self._les = [str(float(b)) for b in spec.boundaries] + ["+Inf"]
        self._bucket = serve_metrics.Gauge(
            f"{spec.name}_bucket", f"{spec.description} (observations <= le)",
            tag_keys=with_le,
        )  # fmt: skip
        self._count = serve_metrics.Gauge(
            f"{spec.name}_count", f"{spec.description} (observations)", tag_keys=tags
        )
        self._sum = serve_metrics.Gauge(
            f"{spec.name}_sum", f"{spec.description} (sum of observations)", tag_keys=tags
        )
        self._totals: dict[tuple[str, ...], _Totals] = {}

    def observe(self, values: Iterable[float], tags: dict[str, str]) -> None:
        """Add ``values`` to the totals of ``tags`` and export them."""
        key = tuple(tags.values())
        totals = self._totals.get(key)
        if totals is None:
            totals = self._totals[key] = _Totals(
                [0] * len(self._les), 0, 0.0, [{**tags, "le": le} for le in self._les], tags
            )
        for value in values:
            totals.buckets[bisect.bisect_left(self._boundaries, value)] += 1
            totals.count += 1
            totals.sum += value
        self._export(totals)

    def refresh(self) -> None:
        """Export every label set's totals again, so that Ray's agent keeps them."""
        for totals in self._totals.values():
            self._export(totals)

    def _export(self, totals: _Totals) -> None:
        cumulative = 0
        for count, bucket_tags in zip(totals.buckets, totals.bucket_tags, strict=True):
            cumulative += count
            self._bucket.set(cumulative, bucket_tags)
        self._count.set(totals.count, totals.tags)
        self._sum.set(totals.sum, totals.tags)


REQUESTS = Spec(
    "sigserve_requests",
    "counter",
    "Inference requests answered, by model, version and HTTP status",
    ("model", "version", "status"),
)
REQUEST_SECONDS = Spec(
    "sigserve_request_seconds",
    "histogram",
    "Time an inference request spent in the serving app (validate, resolve, batch, predict)",
    ("model", "version"),
    REQUEST_BUCKETS,
)
LOADS = Spec(
    "sigserve_model_loads",
    "counter",
    "Model loads on this replica, by model, version and result (ok, failed)",
    ("model", "version", "result"),
)
LOAD_SECONDS = Spec(
    "sigserve_model_load_seconds",
    "histogram",
    "Time to download and load a model version that loaded",
    ("model", "version"),
    LOAD_BUCKETS,
)
EVICTIONS = Spec(
    "sigserve_model_evictions",
    "counter",
    "Models evicted from this replica's LRU to make room for another",
    ("model", "version"),
)
BATCH_SIZE = Spec(
    "sigserve_batch_size",
    "histogram",
    "Records per predict call (requests for one version batched together)",
    ("model", "version"),
    BATCH_BUCKETS,
)
TABLE_REVISION = Spec(
    "sigserve_replica_table_revision",
    "gauge",
    "Revision of the routing table this replica answers from",
)
TABLE_AGE = Spec(
    "sigserve_replica_table_age_seconds",
    "gauge",
    "Seconds since this replica took the routing table it holds",
)
SHADOWS = Spec(
    "sigserve_shadow_requests",
    "counter",
    "Shadow requests of a rollout's candidate, by model, candidate version and result (agreed, "
    "disagreed, failed, dropped); never counted in sigserve_requests",
    ("model", "version", "result"),
)
SPECS = (
    REQUESTS, REQUEST_SECONDS, LOADS, LOAD_SECONDS, EVICTIONS, BATCH_SIZE, TABLE_REVISION,
    TABLE_AGE, SHADOWS,
)  # fmt: skip


def exported_names() -> set[str]:
    return {name for spec in SPECS for name in spec.exported()}


class HeldTable(Protocol):
    @property
    def table(self) -> RoutingTable | None: ...

    @property
    def taken_at(self) -> float | None: ...


def gauge_refresh_s() -> float:
    """Half of Ray's metrics report interval: how often a gauge must be set to stay exported.

    Ray's agent keeps a gauge for two report intervals after it was last set, the interval
    floored at 1 s (``ray._private.telemetry.open_telemetry_metric_recorder``).
    """
    try:
        import ray

        interval_s = max(int(ray._config.metrics_report_interval_ms()), 1000) / 1000
    except Exception:
        interval_s = 10.0  # Ray's default
    return max(FLUSH_S, interval_s / 2)


def _model_version(model_id: str) -> tuple[str, str]:
    try:
        parsed = parse_model_id(model_id)
    except Exception:
        return "", ""
    return parsed.name, parsed.version


class ReplicaMetrics:
    """``serving.recorder.Recorder`` on Ray's metrics, plus loads, evictions and the table."""

    def __init__(self, *, flush_s: float = FLUSH_S, refresh_s: float | None = None) -> None:
        self._flush_s = flush_s
        self._refresh_s = gauge_refresh_s() if refresh_s is None else refresh_s
        self._refreshed_at = time.monotonic()
        self._requests = REQUESTS.create()
        self._request_seconds = REQUEST_SECONDS.create()
        self._loads = LOADS.create()
        self._load_seconds = LOAD_SECONDS.create()
        self._evictions = EVICTIONS.create()
        self._batch_size = BATCH_SIZE.create()
        self._table_revision = TABLE_REVISION.create()
        self._table_age = TABLE_AGE.create()
        self._shadows = SHADOWS.create()
        # Gathered on the request path, handed to Ray by ``flush``.
        self._requests_seen: dict[tuple[str, str, int], list[float]] = {}
        self._batches_seen: dict[str, list[int]] = {}
        self._shadows_seen: dict[tuple[str, str, str], int] = {}
        # Label dictionaries, built once per key.
        self._status_tags: dict[tuple[str, str, int], dict[str, str]] = {}
        self._version_tags: dict[tuple[str, str], dict[str, str]] = {}
        self._table: HeldTable | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, table: HeldTable) -> None:
        """Report the revision and age of ``table``'s routing table."""
        self._table = table

    # The request path (``serving.recorder.Recorder``): no Ray call here.

    def request(self, model: str, version: str, status: int, seconds: float) -> None:
        key = (model, version, status)
        seen = self._requests_seen.get(key)
        if seen is None:
            self._requests_seen[key] = [seconds]
        else:
            seen.append(seconds)

    def batch(self, model_id: str, records: int) -> None:
        seen = self._batches_seen.get(model_id)
        if seen is None:
            self._batches_seen[model_id] = [records]
        else:
            seen.append(records)

    def shadow(self, model: str, version: str, result: str) -> None:
        """One shadow request's result (``serving.rollout_shadow``), off the client's path."""
        key = (model, version, result)
        self._shadows_seen[key] = self._shadows_seen.get(key, 0) + 1

    # Rare events, recorded at once.

    def loaded(self, model_id: str, seconds: float, *, ok: bool) -> None:
        model, version = _model_version(model_id)
        self._loads.inc(1, {"model": model, "version": version, "result": "ok" if ok else "failed"})
        if ok:
            self._load_seconds.observe((seconds,), self._tags(model, version))

    def evicted(self, model_id: str) -> None:
        """Called by Ray's multiplexer from a worker thread: recorded on the event loop."""
        model, version = _model_version(model_id)

        def inc() -> None:
            self._evictions.inc(1, {"model": model, "version": version})

        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(inc)
        else:
            inc()

    # The background task.

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="sigserve-metrics")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                self.flush()
            except Exception:
                # Metrics must never take the replica down; the next flush tries again.
                logger.exception("recording metrics failed")

    def flush(self) -> None:
        """Hand what the request path gathered to Ray, and set the table gauges."""
        requests, self._requests_seen = self._requests_seen, {}
        latencies: dict[tuple[str, str], list[float]] = {}
        for key, seconds in requests.items():
            self._requests.inc(len(seconds), self._tags_with_status(key))
            latencies.setdefault((key[0], key[1]), []).extend(seconds)
        for (model, version), seconds in latencies.items():
            self._request_seconds.observe(seconds, self._tags(model, version))
        batches, self._batches_seen = self._batches_seen, {}
        for model_id, sizes in batches.items():
            self._batch_size.observe(sizes, self._tags(*_model_version(model_id)))
        shadows, self._shadows_seen = self._shadows_seen, {}
        for (model, version, result), count in shadows.items():
            self._shadows.inc(count, {"model": model, "version": version, "result": result})
        if time.monotonic() - self._refreshed_at >= self._refresh_s:
            self._refreshed_at = time.monotonic()
            for histogram in (self._request_seconds, self._load_seconds, self._batch_size):
                histogram.refresh()
        held = self._table
        table = held.table if held is not None else None
        if held is not None and table is not None and held.taken_at is not None:
            self._table_revision.set(table.revision)
            self._table_age.set(max(0.0, time.monotonic() - held.taken_at))

    def _tags_with_status(self, key: tuple[str, str, int]) -> dict[str, str]:
        tags = self._status_tags.get(key)
        if tags is None:
            tags = self._status_tags[key] = {
                "model": key[0], "version": key[1], "status": str(key[2]),
            }  # fmt: skip
        return tags

    def _tags(self, model: str, version: str) -> dict[str, str]:
        tags = self._version_tags.get((model, version))
        if tags is None:
            tags = self._version_tags[(model, version)] = {"model": model, "version": version}
        return tags

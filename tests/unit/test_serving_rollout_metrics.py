"""Shadow requests are counted in a metric of their own (serving.metrics, ``SHADOWS``)."""

from __future__ import annotations

import asyncio

import pytest

from serving import metrics as serving_metrics
from serving.metrics import ReplicaMetrics
from tests.unit.test_serving_metrics import FakeMetric


def test_shadow_results_reach_ray_once_a_flush_and_never_as_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeMetric.made = made = {}
    monkeypatch.setattr(serving_metrics.serve_metrics, "Counter", FakeMetric)
    monkeypatch.setattr(serving_metrics.serve_metrics, "Gauge", FakeMetric)

    async def go() -> None:
        m = ReplicaMetrics(flush_s=3600)
        await m.start()
        for result in ("agreed", "agreed", "disagreed", "dropped"):
            m.shadow("echo", "2", result)
        assert made["sigserve_shadow_requests"].calls == []  # nothing on the request path
        await m.stop()

    asyncio.run(go())
    tags = {"model": "echo", "version": "2"}
    assert sorted(made["sigserve_shadow_requests"].calls, key=str) == sorted(
        [
            ("inc", 2, {**tags, "result": "agreed"}),
            ("inc", 1, {**tags, "result": "disagreed"}),
            ("inc", 1, {**tags, "result": "dropped"}),
        ],
        key=str,
    )
    assert made["sigserve_requests"].calls == []
    assert "ray_sigserve_shadow_requests_total" in serving_metrics.exported_names()

"""The Grafana dashboard (deploy/grafana/sigserve.json) charts only metrics the stack exports.

The exported names come from the metric objects themselves: the controller's registry
(``Metrics.create()``, as the app builds it) and the serving replicas' specs, from which the
replica makes its Ray metrics (``serving.metrics.SPECS``, with Ray's ``ray_`` prefix and
Prometheus' suffixes). A query naming anything else (a typo, a renamed metric) fails here, and
so does a metric no panel charts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from controller.metrics import Metrics
from controller.metrics import exported_names as controller_names
from serving.metrics import SPECS
from serving.metrics import exported_names as serving_names

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "sigserve.json"
# PromQL's words that are not metrics: functions, aggregations and keywords used in queries.
PROMQL_WORDS = frozenset({
    "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "histogram_quantile",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "abs", "clamp_min", "clamp_max", "delta", "deriv", "time", "vector",
    "topk", "bottomk", "avg_over_time", "max_over_time", "min_over_time", "changes", "resets",
})  # fmt: skip


def queries(node: Any) -> list[str]:
    """Every ``expr`` anywhere in the dashboard (panels, rows, templating)."""
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [q for value in node.values() for q in queries(value)]
    if isinstance(node, list):
        return [q for value in node for q in queries(value)]
    return []


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings: label values, legend text
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors, [$__rate_interval]
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    text = re.sub(r"\$\w+", "", text)  # Grafana variables
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+e\d+", w)}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return controller_names(Metrics.create().registry) | serving_names()


@pytest.fixture(scope="module")
def dashboard_queries() -> list[str]:
    document = json.loads(DASHBOARD.read_text())
    assert document["uid"] == "sigserve"
    found = queries(document)
    assert len(found) >= 20, found
    return found


def test_the_exported_names_are_what_prometheus_scrapes(exported: set[str]) -> None:
    assert {"sigserve_webhooks_total", "sigserve_reconcile_seconds_bucket",
            "sigserve_model_versions", "ray_sigserve_requests_total",
            "ray_sigserve_request_seconds_bucket", "ray_sigserve_replica_table_revision",
            } <= exported  # fmt: skip
    # A name nothing exports is not among them (the check below has teeth).
    assert "sigserve_requests_total" not in exported


def test_every_query_names_only_metrics_the_stack_exports(
    dashboard_queries: list[str], exported: set[str]
) -> None:
    unknown = {
        expr: sorted(metric_names(expr) - exported)
        for expr in dashboard_queries
        if metric_names(expr) - exported
    }
    assert unknown == {}
    assert all(metric_names(expr) for expr in dashboard_queries)


def test_every_metric_of_the_stack_is_charted(dashboard_queries: list[str]) -> None:
    charted = {name for expr in dashboard_queries for name in metric_names(expr)}
    families = {f.name for f in Metrics.create().registry.collect()}
    families |= {f"ray_{spec.name}" for spec in SPECS}

    def is_charted(family: str) -> bool:
        return any(name == family or name.startswith(f"{family}_") for name in charted)

    assert sorted(f for f in families if not is_charted(f)) == []


def test_the_parser_finds_metrics_and_not_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(ray_sigserve_request_seconds_bucket'
        '{status=~"5.."}[$__rate_interval]))) / max(sigserve_routing_table_revision)'
    )
    assert metric_names(expr) == {
        "ray_sigserve_request_seconds_bucket", "sigserve_routing_table_revision",
    }  # fmt: skip

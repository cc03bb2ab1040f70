"""Prometheus metrics of one controller instance (its own registry, built by the app)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry
    webhooks: Counter
    reconciles: Counter
    reconcile_seconds: Histogram
    table_revision: Gauge
    versions: Gauge
    load_failure_reports: Counter
    leader: Gauge

    @classmethod
    def create(cls) -> Metrics:
        r = CollectorRegistry()
        return cls(
            registry=r,
            webhooks=Counter(
                "sigserve_webhooks", "Webhook deliveries by result", ["result"], registry=r
            ),
            reconciles=Counter(
                "sigserve_reconciles", "Reconcile passes by result", ["result"], registry=r
            ),
            reconcile_seconds=Histogram(
                "sigserve_reconcile_seconds", "Time for one reconcile pass", registry=r
            ),
            table_revision=Gauge(
                "sigserve_routing_table_revision", "Revision of the published table", registry=r
            ),
            versions=Gauge(
                "sigserve_model_versions", "Known model versions by state", ["state"], registry=r
            ),
            load_failure_reports=Counter(
                "sigserve_load_failure_reports",
                "Serving replicas' reports of artifacts they could not load, by result",
                ["result"],
                registry=r,
            ),
            leader=Gauge(
                "sigserve_controller_leader",
                "1 while this controller leads (runs the reconcile loop), 0 while it follows",
                registry=r,
            ),
        )

"""The rollouts' Prometheus metrics, on the controller's registry (``controller.metrics``).

Label values are known in advance (outcomes, reason codes, report results), except the weight
gauge's ``model``: only a model with a running rollout has one (an admin started it; the series
is removed when it ends), so its series stay as few as the rollouts an operator runs at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

# How a rollout ended, and why: (outcome, reason code).
ENDINGS = (
    ("promoted", "gates"), ("promoted", "by-hand"),
    ("rolled-back", "errors"), ("rolled-back", "latency"), ("rolled-back", "agreement"),
    ("aborted", "by-hand"),
    ("ended", "candidate-not-live"), ("ended", "default-changed"),
    ("ended", "contract-changed"), ("ended", "model-gone"), ("ended", "pin-refused"),
)  # fmt: skip
REPORT_RESULTS = ("recorded", "unknown", "limited", "unauthorized")


@dataclass
class RolloutMetrics:
    started: Counter
    ended: Counter
    steps: Counter
    weight: Gauge
    reports: Counter

    @classmethod
    def create(cls, r: CollectorRegistry) -> RolloutMetrics:
        m = cls(
            started=Counter("sigserve_rollouts_started", "Rollouts started", registry=r),
            ended=Counter(
                "sigserve_rollouts_ended",
                "Rollouts ended, by outcome (promoted, rolled-back, aborted, ended) and reason",
                ["outcome", "reason"],
                registry=r,
            ),
            steps=Counter(
                "sigserve_rollout_steps",
                "Rollout steps passed (gates passed, weight raised)",
                registry=r,
            ),
            weight=Gauge(
                "sigserve_rollout_weight",
                "The share of a model's unversioned requests its rollout's candidate answers",
                ["model"],
                registry=r,
            ),
            reports=Counter(
                "sigserve_rollout_reports",
                "Replicas' rollout count reports, by result (per report within a POST)",
                ["result"],
                registry=r,
            ),
        )
        for outcome, reason in ENDINGS:
            m.ended.labels(outcome, reason)
        for result in REPORT_RESULTS:
            m.reports.labels(result)
        return m

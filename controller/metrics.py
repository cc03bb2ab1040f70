"""Prometheus metrics of one controller instance (its own registry, built by the app).

Served at ``GET /metrics`` (``controller.health``). Every metric is named, with what to alert
on, in ``docs/operations.md``; ``deploy/grafana/sigserve.json`` charts them. Label values are
known in advance (results, states, policies, kinds), never model names: a signed webhook can
name any model, and the controller's metrics must stay bounded. The series of every known label
value are created at 0, so a rate or an alert sees them before the first event.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controller.compatibility import Policy
from controller.rollout_metrics import RolloutMetrics
from controller.work_queue import LANES
from wire.routing_table import VersionState

WEBHOOK_RESULTS = (
    "accepted", "duplicate", "rejected", "malformed", "too_large", "no_length", "own_write",
)  # fmt: skip
RECONCILE_RESULTS = ("ok", "temporary_error", "permanent_error", "error")
# What a failed registry call was: worth a retry (network, 5xx), refused for good (permissions,
# bad request), or about a model or version that no longer exists.
REGISTRY_ERROR_KINDS = ("temporary", "permanent", "gone")
# The registry reads the passes make (controller/registry.py): a version at a location read
# before is read as its MLmodel alone (artifact_cached); a model (its tags, aliases) and its
# versions read alone, with the models waiting in the queue (_many), or taken from such a read
# (_shared: no request).
REGISTRY_READS = (
    "model", "model_many", "model_shared", "versions", "versions_many", "versions_shared",
    "listing", "artifact", "artifact_cached",
)  # fmt: skip
# The write-back's backlog (controller/write_back_lane.py): behind, models whose latest decision
# is not marked written back (the store's count, at each scrape); queued, the lane's jobs not
# done (waiting, running, backing off); refused, refused for good.
WRITE_BACK_STATES = ("behind", "queued", "refused")
LOAD_REPORT_RESULTS = (
    "recorded", "repeated", "stale", "unknown", "unauthorized", "default_live", "limited",
)  # fmt: skip
# A proof report: what it recorded (a passed proof of a version logged without an example is
# not_exercised), or why it recorded nothing; and where the version was proven.
PROOF_RESULTS = ("passed", "failed", "not_exercised", "repeated", "stale")
PROOF_ENVIRONMENTS = ("shared", "own")
STATES = tuple(s.value for s in VersionState)
POLICIES = tuple(p.value for p in Policy)

# Seconds. A publish reads every decision and writes one row; registration to live spans the
# webhook, the artifact read, the decision and the publish (a resync can take 30 s more).
PUBLISH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REGISTRATION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


@dataclass
class Metrics:
    registry: CollectorRegistry
    webhooks: Counter
    reconciles: Counter
    reconcile_seconds: Histogram
    reconcile_queue_depth: Gauge
    reconcile_in_flight: Gauge
    table_revision: Gauge
    versions: Gauge
    load_failure_reports: Counter
    proof_reports: Counter
    leader: Gauge
    decisions: Counter
    registry_errors: Counter
    registry_reads: Counter
    write_back_backlog: Gauge
    publish_seconds: Histogram
    registration_to_live_seconds: Histogram
    # Rollouts (issue 19): started, ended by outcome and reason, steps, weights, reports.
    rollouts: RolloutMetrics

    @classmethod
    def create(cls) -> Metrics:
        r = CollectorRegistry()
        metrics = cls(
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
            reconcile_queue_depth=Gauge(
                "sigserve_reconcile_queue_depth",
                "Model names waiting for a reconcile pass, by lane (events: webhooks, retries, "
                "admin and followers' requests, taken first; resync)",
                ["lane"],
                registry=r,
            ),
            reconcile_in_flight=Gauge(
                "sigserve_reconcile_in_flight",
                "Reconcile passes running now (at most SIGSERVE_RECONCILE_CONCURRENCY)",
                registry=r,
            ),
            table_revision=Gauge(
                "sigserve_routing_table_revision",
                "Revision of the routing table this controller answers the long-poll with",
                registry=r,
            ),
            versions=Gauge(
                "sigserve_model_versions",
                "Model versions in that routing table, by state",
                ["state"],
                registry=r,
            ),
            load_failure_reports=Counter(
                "sigserve_load_failure_reports",
                "Serving replicas' reports (artifacts they could not load, proofs), by result",
                ["result"],
                registry=r,
            ),
            proof_reports=Counter(
                "sigserve_proof_reports",
                "Serving replicas' proofs of versions before their first request, by result and "
                "where the version was proven (shared, or an environment of its own)",
                ["result", "environment"],
                registry=r,
            ),
            leader=Gauge(
                "sigserve_controller_leader",
                "1 while this controller leads (runs the reconcile loop), 0 while it follows",
                registry=r,
            ),
            decisions=Counter(
                "sigserve_decisions",
                "Versions whose verdict (state or reasons) changed, by the new state and the "
                "model's compatibility policy",
                ["state", "policy"],
                registry=r,
            ),
            registry_errors=Counter(
                "sigserve_registry_errors",
                "Failed calls to the MLflow registry, by kind (temporary, permanent, gone)",
                ["kind"],
                registry=r,
            ),
            registry_reads=Counter(
                "sigserve_registry_reads",
                "Reads of the MLflow registry by the reconciles and the resync, by read (model, "
                "versions, listing; *_many: with the models waiting, *_shared: taken from such "
                "a read, no request; artifact: a version read in full, artifact_cached: its "
                "MLmodel alone, the rest known from its location)",
                ["read"],
                registry=r,
            ),
            write_back_backlog=Gauge(
                "sigserve_write_back_backlog",
                "The write-back of verdicts to the registry (tags, alias): behind, models "
                "whose latest decision is not written back yet (from the database); queued, "
                "the lane's jobs not done (waiting, running, backing off); refused, refused "
                "for good (until decided anew or the full resync)",
                ["state"],
                registry=r,
            ),
            publish_seconds=Histogram(
                "sigserve_publish_seconds",
                "Time to publish the routing table: build it from the decisions, write its "
                "revision, hand it to the long-poll",
                buckets=PUBLISH_BUCKETS,
                registry=r,
            ),
            registration_to_live_seconds=Histogram(
                "sigserve_registration_to_live_seconds",
                "From a version's creation in the registry (its creation_timestamp) to the "
                "publish of the first table in which it is live",
                buckets=REGISTRATION_BUCKETS,
                registry=r,
            ),
            rollouts=RolloutMetrics.create(r),
        )
        metrics._zero()
        return metrics

    def _zero(self) -> None:
        for result in WEBHOOK_RESULTS:
            self.webhooks.labels(result)
        for result in RECONCILE_RESULTS:
            self.reconciles.labels(result)
        for lane in LANES:
            self.reconcile_queue_depth.labels(lane)
        for result in LOAD_REPORT_RESULTS:
            self.load_failure_reports.labels(result)
        for result in PROOF_RESULTS:
            for environment in PROOF_ENVIRONMENTS:
                self.proof_reports.labels(result, environment)
        for kind in REGISTRY_ERROR_KINDS:
            self.registry_errors.labels(kind)
        for read in REGISTRY_READS:
            self.registry_reads.labels(read)
        for state in STATES:
            self.versions.labels(state)
            for policy in POLICIES:
                self.decisions.labels(state, policy)


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name ``registry`` exports (``_total``, ``_bucket``... included)."""
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(f"{family.name}{s}" for s in ("_bucket", "_count", "_sum"))
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names

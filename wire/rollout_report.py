"""What a replica tells the controller about a rollout: its counts per version, and its shadow's.

A replica counts, for each rollout in its table, the requests each of the two versions answered
(the candidate's and the default's, over the same time), the errors among them (5xx and
timeouts), the requests each refused (4xx but 429, which load shedding answers, and 499, a client
gone: a candidate refusing inputs its default takes fails the errors gate too) and their
latencies in fixed buckets, and with a shadow the answers it compared. It posts them to
``POST /serving/rollout-reports`` with the serving token, about once a second.

Counts are **totals since the replica began counting for that rollout id**, not deltas: a report
lost or sent twice changes nothing, and the controller keeps the latest report per replica id and
sums over replicas. A replica that restarts gets a new replica id and counts from zero. A
replica that stops reporting adds nothing, so it never promotes anything.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Upper bounds (milliseconds) of the latency buckets; the last bucket is everything above.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000,
)  # fmt: skip
# How many disagreements one report carries, and how much of each value it keeps.
MAX_SAMPLES = 5
MAX_SAMPLE_CHARS = 2_000


class VersionCounts(BaseModel):
    model_config = ConfigDict(frozen=True)

    requests: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    # Requests answered 4xx (not 429 nor 499). Absent from an older replica's report: 0, so its
    # report still counts (its refusals do not).
    rejected: int = Field(default=0, ge=0)
    # One count per bucket of LATENCY_BUCKETS_MS, then one for above the last bound.
    latency_ms: list[int] = Field(
        default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1),
        min_length=len(LATENCY_BUCKETS_MS) + 1,
        max_length=len(LATENCY_BUCKETS_MS) + 1,
    )


class Disagreement(BaseModel):
    """One request whose shadow answer differed: each value JSON, cut to MAX_SAMPLE_CHARS."""

    model_config = ConfigDict(frozen=True)

    input: str = Field(max_length=MAX_SAMPLE_CHARS)
    default: str = Field(max_length=MAX_SAMPLE_CHARS)
    candidate: str = Field(max_length=MAX_SAMPLE_CHARS)


class ShadowCounts(BaseModel):
    model_config = ConfigDict(frozen=True)

    # Answers compared, and how many of them agreed.
    compared: int = Field(default=0, ge=0)
    agreed: int = Field(default=0, ge=0)
    # Shadow requests dropped (queue full) or failed on the candidate: never compared.
    dropped: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)
    # The latest disagreements, newest last.
    samples: list[Disagreement] = Field(default_factory=list, max_length=MAX_SAMPLES)


class RolloutReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str = Field(min_length=1, max_length=256)
    rollout_id: str = Field(min_length=1, max_length=64)
    # Keyed by version: the rollout's candidate and the default it is compared with.
    versions: dict[str, VersionCounts] = Field(max_length=2)
    shadow: ShadowCounts | None = None


class RolloutReports(BaseModel):
    """One POST: a replica's reports for every rollout it counts."""

    model_config = ConfigDict(frozen=True)

    replica_id: str = Field(min_length=1, max_length=256)
    reports: list[RolloutReport] = Field(max_length=1_000)

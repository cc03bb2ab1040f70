"""A rollout's gates: pure functions on the counts replicas report (docs/architecture.md,
"Rollouts").

Replicas report totals since they began counting (``wire.rollout_report``); the controller keeps
the latest per replica and sums them (``Totals``). A step's window is the totals now minus the
totals when the step began, so a step is judged on its own requests only.

The gates, each over the step's window, with their defaults (``Thresholds``):

- errors: the candidate's error rate (5xx, timeouts) at most the default's plus
  ``max_error_increase`` (1 percentage point), and its rate of refusals (4xx: inputs it rejects
  that the default may take) at most the default's plus the same. The default's rates are its
  window's when it answered at least ``BASELINE_REQUESTS`` there, else its rates over the whole
  rollout (a step at 100% leaves it no traffic), else 0.
- latency: the candidate's p99 at most ``max_p99_ratio`` (1.5) times the default's plus
  ``p99_slack_ms`` (5 ms). Percentiles are read off the report's fixed buckets, interpolated
  within the bucket that holds them, so equal distributions give equal p99s. Judged only when
  both sides have at least ``LATENCY_REQUESTS`` (1,000) timed requests (the default's over the
  whole rollout when its window has fewer); otherwise "not judged".
- agreement (with a shadow): shadow runs whose answer agreed at least ``min_agreement`` (0.99)
  of those the candidate ran, a run that failed on the candidate (raised, timed out) counting
  as a disagreement. Shadows dropped (a busy replica gives way to its clients, a full queue)
  are not runs and count for nothing. Judged once ``AGREEMENT_RUNS`` (100) ran, or earlier when
  the disagreements are already more than any ``AGREEMENT_RUNS`` runs allow; until then "not
  judged", saying how many ran and were dropped.

A step ends when its hold time has passed *and* it saw ``min_requests`` (the candidate's
requests plus its shadow runs, compared or failed): then all gates are judged, and one failure
rolls back. A candidate fails early, before the hold time, once it answered at least
``early_min_requests`` (50) in the step with an error (or refusal) rate past the default's by
``early_error_increase`` (5 points): a candidate that fails 30% of its requests is out after its
first ~50, not after 10 minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from wire.rollout_report import LATENCY_BUCKETS_MS, RolloutReport

# Requests the default needs before its error rate stands as the baseline.
BASELINE_REQUESTS = 100
# Requests a side needs before its p99 is judged: the 99th percentile of 1,000 is about the
# tenth slowest; of 100 it is the slowest, which one pause of a shared machine moves by a bucket
# (an integration run rolled back a candidate identical to its default so, at ~100 a side).
LATENCY_REQUESTS = 1_000
# Shadow runs before the agreement is judged: at 0.99, one disagreement in 100 is the bound.
AGREEMENT_RUNS = 100
_BUCKETS = len(LATENCY_BUCKETS_MS) + 1


class Thresholds(BaseModel):
    """A rollout's gates and how a shadow compares answers; every field has its default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_error_increase: float = Field(default=0.01, ge=0, le=1)
    max_p99_ratio: float = Field(default=1.5, ge=1)
    p99_slack_ms: float = Field(default=5.0, ge=0)
    min_agreement: float = Field(default=0.99, ge=0, le=1)
    early_error_increase: float = Field(default=0.05, ge=0, le=1)
    early_min_requests: int = Field(default=50, ge=1)
    # How a shadow compares answers (``wire.routing_table.Rollout``).
    rel_tol: float = Field(default=1e-6, ge=0)
    abs_tol: float = Field(default=1e-9, ge=0)
    min_cosine: float = Field(default=0.999, ge=-1, le=1)


@dataclass(frozen=True)
class Side:
    """One version's counts: requests, errors (5xx), latency buckets, refusals (4xx)."""

    requests: int = 0
    errors: int = 0
    latency: tuple[int, ...] = (0,) * _BUCKETS
    rejected: int = 0

    def __add__(self, other: Side) -> Side:
        return Side(
            self.requests + other.requests,
            self.errors + other.errors,
            tuple(a + b for a, b in zip(self.latency, other.latency, strict=True)),
            self.rejected + other.rejected,
        )

    def __sub__(self, other: Side) -> Side:
        # A replica forgotten (its row pruned) could make a difference negative: never below 0.
        return Side(
            max(0, self.requests - other.requests),
            max(0, self.errors - other.errors),
            tuple(max(0, a - b) for a, b in zip(self.latency, other.latency, strict=True)),
            max(0, self.rejected - other.rejected),
        )

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def rejected_rate(self) -> float:
        return self.rejected / self.requests if self.requests else 0.0

    def p99_ms(self) -> float | None:
        """The 99th percentile, interpolated within the bucket that holds it (linearly, from
        the bound below to its own); None without requests. Past the last bound: twice the last
        bound (slower than anything the buckets name)."""
        total = sum(self.latency)
        if total == 0:
            return None
        wanted, seen = 0.99 * total, 0
        for i, count in enumerate(self.latency):
            if count and seen + count >= wanted:
                if i == len(LATENCY_BUCKETS_MS):
                    return 2 * LATENCY_BUCKETS_MS[-1]
                low = LATENCY_BUCKETS_MS[i - 1] if i else 0.0
                return low + (LATENCY_BUCKETS_MS[i] - low) * (wanted - seen) / count
            seen += count
        return 2 * LATENCY_BUCKETS_MS[-1]  # pragma: no cover (seen reaches total)

    @property
    def timed(self) -> int:
        return sum(self.latency)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "rejected": self.rejected,
            "latency_ms": list(self.latency),
        }

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> Side:
        if not data:
            return cls()
        latency = tuple(int(x) for x in data.get("latency_ms", ()))
        return cls(
            int(data.get("requests", 0)),
            int(data.get("errors", 0)),
            latency if len(latency) == _BUCKETS else (0,) * _BUCKETS,
            int(data.get("rejected", 0)),  # absent before refusals were counted
        )


@dataclass(frozen=True)
class Totals:
    """A rollout's counts summed over replicas (or a window of them)."""

    candidate: Side = field(default_factory=Side)
    default: Side = field(default_factory=Side)
    compared: int = 0
    agreed: int = 0
    dropped: int = 0
    failed: int = 0

    def __sub__(self, start: Totals) -> Totals:
        return Totals(
            self.candidate - start.candidate,
            self.default - start.default,
            max(0, self.compared - start.compared),
            max(0, self.agreed - start.agreed),
            max(0, self.dropped - start.dropped),
            max(0, self.failed - start.failed),
        )

    @property
    def step_requests(self) -> int:
        """What a step's ``min_requests`` counts: the candidate's answers and its shadow runs
        (a candidate failing every shadow must still end its step, and fail it)."""
        return self.candidate.requests + self.compared + self.failed

    def to_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.to_json(),
            "default": self.default.to_json(),
            "shadow": {
                "compared": self.compared,
                "agreed": self.agreed,
                "dropped": self.dropped,
                "failed": self.failed,
            },
        }

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> Totals:
        if not data:
            return cls()
        shadow = data.get("shadow") or {}
        return cls(
            Side.of(data.get("candidate")),
            Side.of(data.get("default")),
            *(int(shadow.get(k, 0)) for k in ("compared", "agreed", "dropped", "failed")),
        )


def summed(
    reports: list[tuple[dict[str, Any], dict[str, Any] | None]], candidate: str, default: str
) -> Totals:
    """The totals of every replica's latest report: (versions, shadow) as stored."""
    total = Totals()
    for versions, shadow in reports:
        shadow = shadow or {}
        total = Totals(
            total.candidate + Side.of(versions.get(candidate)),
            total.default + Side.of(versions.get(default)),
            total.compared + int(shadow.get("compared", 0)),
            total.agreed + int(shadow.get("agreed", 0)),
            total.dropped + int(shadow.get("dropped", 0)),
            total.failed + int(shadow.get("failed", 0)),
        )
    return total


def stored_report(report: RolloutReport) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A report as ``rollout_counts`` keeps it (the samples apart from the counts)."""
    versions = {v: c.model_dump(mode="json") for v, c in report.versions.items()}
    shadow = report.shadow.model_dump(mode="json") if report.shadow is not None else None
    return versions, shadow


@dataclass(frozen=True)
class Gate:
    name: str
    # "passed", "failed" or "not-judged" (too few requests to say).
    outcome: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"gate": self.name, "outcome": self.outcome, "detail": self.detail}


def _baseline(window: Totals, whole: Totals) -> Side:
    """The default's side the candidate's rates are held to."""
    if window.default.requests >= BASELINE_REQUESTS:
        return window.default
    if whole.default.requests >= BASELINE_REQUESTS:
        return whole.default
    return Side()


def _errors(window: Totals, whole: Totals, increase: float) -> tuple[bool, str]:
    """Whether the candidate's 5xx and 4xx rates are each within ``increase`` of the default's,
    and how they compare."""
    cand, base = window.candidate, _baseline(window, whole)
    ok = (
        cand.error_rate <= base.error_rate + increase
        and cand.rejected_rate <= base.rejected_rate + increase
    )
    detail = (
        f"candidate {cand.error_rate:.2%} of {cand.requests} against "
        f"default {base.error_rate:.2%} + {increase:.2%}"
    )
    if cand.rejected or base.rejected:
        detail += (
            f"; refused (4xx) {cand.rejected_rate:.2%} against {base.rejected_rate:.2%} "
            f"+ {increase:.2%}"
        )
    return ok, detail


def judge(window: Totals, whole: Totals, t: Thresholds, *, shadow: bool) -> list[Gate]:
    """Every gate over a step's ``window`` (``whole``: the rollout's totals, for a baseline)."""
    gates = []
    if window.candidate.requests == 0:
        gates.append(Gate("errors", "not-judged", "the candidate answered no request"))
    else:
        ok, detail = _errors(window, whole, t.max_error_increase)
        gates.append(Gate("errors", "passed" if ok else "failed", detail))
    # The default's p99 over the window, else over the whole rollout (no traffic at 100%).
    default = window.default if window.default.timed >= LATENCY_REQUESTS else whole.default
    cand, dflt = window.candidate.p99_ms(), default.p99_ms()
    enough = min(window.candidate.timed, default.timed) >= LATENCY_REQUESTS
    if cand is None or dflt is None or not enough:
        gates.append(
            Gate("latency", "not-judged", f"fewer than {LATENCY_REQUESTS} requests on a side")
        )
    else:
        bound = dflt * t.max_p99_ratio + t.p99_slack_ms
        gates.append(
            Gate(
                "latency",
                "passed" if cand <= bound else "failed",
                f"candidate p99 {cand:.3g} ms against {bound:.3g} ms "
                f"(default {dflt:.3g} ms x {t.max_p99_ratio:g} + {t.p99_slack_ms:g})",
            )
        )
    if shadow:
        gates.append(_agreement(window, t))
    return gates


def _agreement(window: Totals, t: Thresholds) -> Gate:
    ran = window.compared + window.failed
    dropped = f"{window.dropped} dropped" if window.dropped else "none dropped"
    # More disagreements than AGREEMENT_RUNS runs allow: failing, however the rest answer.
    settled = (ran - window.agreed) > (1 - t.min_agreement) * AGREEMENT_RUNS + 1e-9
    if ran < AGREEMENT_RUNS and not settled:
        return Gate(
            "agreement",
            "not-judged",
            f"too few shadows compared: {ran} ran ({dropped}), {AGREEMENT_RUNS} needed",
        )
    agreement = window.agreed / ran
    return Gate(
        "agreement",
        "passed" if agreement >= t.min_agreement else "failed",
        f"{agreement:.2%} of {ran} shadow runs agreed ({window.failed} failed on the "
        f"candidate, {dropped}), at least {t.min_agreement:.2%} needed",
    )


def fails_early(window: Totals, whole: Totals, t: Thresholds) -> Gate | None:
    """The errors gate failed before the step's end: enough requests, far past the default."""
    if window.candidate.requests < t.early_min_requests:
        return None
    ok, detail = _errors(window, whole, t.early_error_increase)
    if ok:
        return None
    return Gate("errors", "failed", f"{detail} (before the step's end)")


def failed(gates: list[Gate]) -> list[Gate]:
    return [g for g in gates if g.outcome == "failed"]

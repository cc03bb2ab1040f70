"""The gates on counts alone: what passes, what fails, what is not judged for lack of requests,
and when a candidate fails before its step's end."""

from __future__ import annotations

from dataclasses import replace

from controller.rollout_gates import (
    LATENCY_REQUESTS,
    Side,
    Thresholds,
    Totals,
    failed,
    fails_early,
    judge,
    stored_report,
    summed,
)
from wire.rollout_report import LATENCY_BUCKETS_MS, RolloutReport

T = Thresholds()


def side(requests: int, errors: int = 0, bucket: int = 2) -> Side:
    latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    latency[bucket] = requests
    return Side(requests, errors, tuple(latency))


def outcomes(
    window: Totals, *, shadow: bool = False, whole: Totals | None = None
) -> dict[str, str]:
    return {g.name: g.outcome for g in judge(window, whole or window, T, shadow=shadow)}


def test_a_candidate_like_the_default_passes_every_gate() -> None:
    window = Totals(side(2000, 10), side(8000, 40), compared=300, agreed=300)
    assert outcomes(window, shadow=True) == {
        "errors": "passed", "latency": "passed", "agreement": "passed"}  # fmt: skip


def test_errors_past_the_default_by_more_than_a_point_fail() -> None:
    assert outcomes(Totals(side(200, 3), side(800, 8)))["errors"] == "passed"  # 1.5% vs 1%+1
    assert outcomes(Totals(side(200, 5), side(800, 8)))["errors"] == "failed"  # 2.5% vs 1%+1


def test_the_default_without_traffic_in_the_step_is_judged_by_the_whole_rollout() -> None:
    # A step at 100%: the default answered nothing in it; its 10% over the rollout stands.
    window = Totals(side(200, 20), side(0))
    whole = Totals(side(300, 30), side(1000, 100))
    assert outcomes(window, whole=whole)["errors"] == "passed"
    assert outcomes(window)["errors"] == "failed"  # no baseline at all: 0%


def test_p99_is_interpolated_in_its_bucket_and_judged_against_1_5_times_the_default() -> None:
    assert side(100, bucket=3).p99_ms() == 5 + (10 - 5) * 0.99  # (5, 10] ms, 99 of 100
    assert side(100, bucket=len(LATENCY_BUCKETS_MS)).p99_ms() == 2 * LATENCY_BUCKETS_MS[-1]
    n = LATENCY_REQUESTS
    slow = Totals(side(n, bucket=6), side(n, bucket=5))  # ~100 ms against ~50 x 1.5 + 5
    assert outcomes(slow)["latency"] == "failed"
    same = Totals(side(n, bucket=6), side(n, bucket=6))
    assert outcomes(same)["latency"] == "passed"


def test_a_p99_of_few_requests_is_not_judged_and_a_few_pauses_in_a_thousand_are_noise() -> None:
    def with_outliers(n: int, slow: int) -> Side:
        latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        latency[3], latency[6] = n - slow, slow  # 5-10 ms, and a few 50-100 ms pauses
        return Side(n, 0, tuple(latency))

    few = Totals(with_outliers(200, 3), side(200, bucket=3))
    assert outcomes(few)["latency"] == "not-judged"  # 3 pauses in 200 would be its p99
    n = LATENCY_REQUESTS
    noisy = Totals(with_outliers(n, 3), side(n, bucket=3))
    assert outcomes(noisy)["latency"] == "passed"  # 3 pauses in 1,000: below its p99
    at_full_weight = Totals(side(n, bucket=3), side(0))
    whole = Totals(side(2 * n, bucket=3), side(n, bucket=3))
    assert outcomes(at_full_weight, whole=whole)["latency"] == "passed"


def test_too_few_requests_are_not_judged_rather_than_passed_or_failed() -> None:
    few = Totals(side(LATENCY_REQUESTS - 1, bucket=9), side(5000), compared=0)
    assert outcomes(few, shadow=True) == {
        "errors": "passed", "latency": "not-judged", "agreement": "not-judged"}  # fmt: skip
    assert outcomes(Totals())["errors"] == "not-judged"


def test_agreement_below_ninety_nine_percent_fails() -> None:
    assert outcomes(Totals(compared=1000, agreed=989), shadow=True)["agreement"] == "failed"
    assert outcomes(Totals(compared=1000, agreed=990), shadow=True)["agreement"] == "passed"


def test_shadows_that_fail_on_the_candidate_count_against_it_and_toward_the_step() -> None:
    # 30% of the shadows raised on the candidate; every one it answered agreed.
    flaky = Totals(compared=700, agreed=700, failed=300)
    assert outcomes(flaky, shadow=True)["agreement"] == "failed"
    # One that fails every shadow still reaches its step's requests, and fails there.
    broken = Totals(failed=200)
    assert broken.step_requests == 200
    assert outcomes(broken, shadow=True)["agreement"] == "failed"


def test_a_candidate_failing_far_past_the_default_fails_early_with_enough_requests() -> None:
    assert fails_early(Totals(side(49, 15), side(500)), Totals(), T) is None  # too few
    early = fails_early(Totals(side(50, 15), side(500)), Totals(), T)
    assert early is not None and early.outcome == "failed"
    assert fails_early(Totals(side(50, 2), side(500)), Totals(), T) is None  # 4%: not far
    assert failed(judge(Totals(side(50, 15), side(500)), Totals(), T, shadow=False))


def test_a_window_is_now_minus_the_step_start_and_totals_sum_over_replicas() -> None:
    replica = ({"2": side(10, 1).to_json(), "1": side(90).to_json()},
               {"compared": 5, "agreed": 4, "dropped": 1, "failed": 0, "samples": []})  # fmt: skip
    total = summed([replica, replica], candidate="2", default="1")
    assert (total.candidate.requests, total.default.requests, total.agreed) == (20, 180, 8)
    window = total - Totals(side(5), side(100))
    assert (window.candidate.requests, window.default.requests) == (15, 80)
    assert window.step_requests == 15 + 10
    assert Totals.of(total.to_json()) == total


def test_a_candidate_refusing_inputs_the_default_takes_fails_the_errors_gate() -> None:
    def refusing(requests: int, rejected: int) -> Side:
        return replace(side(requests), rejected=rejected)

    # 4xx where the default answers 200: past the default's 0% + 1 point, at the step's end...
    assert outcomes(Totals(refusing(200, 5), side(800)))["errors"] == "failed"
    # ... and early, past its + 5 points
    early = fails_early(Totals(refusing(60, 6), side(800)), Totals(), T)
    assert early is not None and "refused (4xx) 10.00%" in early.detail
    # the default refusing as much (a client sending bad inputs to both) passes
    assert outcomes(Totals(refusing(200, 20), refusing(800, 80)))["errors"] == "passed"


def test_a_report_without_refusals_from_an_older_replica_still_counts() -> None:
    old = {"requests": 10, "errors": 1, "latency_ms": [10] + [0] * len(LATENCY_BUCKETS_MS)}
    report = RolloutReport.model_validate(
        {"model": "m", "rollout_id": "r", "versions": {"2": old, "1": old}}
    )
    assert report.versions["2"].rejected == 0
    totals = summed([stored_report(report)], "2", "1")
    assert (totals.candidate.requests, totals.candidate.rejected) == (10, 0)
    assert Side.of(old) == Side(10, 1, tuple(old["latency_ms"]))


def test_agreement_is_judged_on_shadows_that_ran_and_says_when_too_few_did() -> None:
    # A busy replica dropped most: 40 ran, all agreed; 960 dropped count for nothing.
    few = judge(Totals(compared=40, agreed=40, dropped=960), Totals(), T, shadow=True)[-1]
    assert few.outcome == "not-judged"
    assert few.detail == "too few shadows compared: 40 ran (960 dropped), 100 needed"
    # Disagreements past what any 100 runs allow fail before the 100th.
    assert outcomes(Totals(compared=30, agreed=28), shadow=True)["agreement"] == "failed"
    enough = judge(Totals(compared=100, agreed=99, dropped=5), Totals(), T, shadow=True)[-1]
    assert enough.outcome == "passed" and "5 dropped" in enough.detail

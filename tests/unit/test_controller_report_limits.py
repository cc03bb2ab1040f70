"""The controller's budgets for replica reports (``controller.report_limits``) on an injected
clock: a refusal spends nothing, ids are forgotten past a bound, Retry-After is what is left."""

from __future__ import annotations

import json

from controller.report_limits import ReportLimits


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def taken(limits: ReportLimits, replica: str) -> bool:
    return limits.refuse(replica, "/serving/load-failures") is None


def test_a_refused_report_spends_nothing_of_the_other_budget() -> None:
    limits = ReportLimits(clock=Clock(), per_replica=(2, 1.0), overall=(3, 1.0))
    assert [taken(limits, "r1") for _ in range(3)] == [True, True, False]
    # r1's refusal did not spend the budget for all: one is left, for r2.
    assert [taken(limits, "r2"), taken(limits, "r3")] == [True, False]


def test_retry_after_is_what_is_left_until_a_report_is_taken() -> None:
    clock = Clock()
    limits = ReportLimits(clock=clock, per_replica=(1, 6.0), overall=(100, 600.0))
    assert taken(limits, "r1")
    refused = limits.refuse("r1", "/serving/proofs")
    assert refused is not None and refused.status_code == 429
    assert refused.headers["retry-after"] == "10"  # 6 a minute
    body = json.loads(bytes(refused.body))
    assert (body["instance"], body["status"]) == ("/serving/proofs", 429)
    clock.now += 9.5
    assert not taken(limits, "r1")
    clock.now += 0.5
    assert taken(limits, "r1")


def test_replica_ids_are_kept_to_a_bound() -> None:
    limits = ReportLimits(clock=Clock(), per_replica=(1, 1.0), overall=(100, 1.0), kept=2)
    assert taken(limits, "r1") and not taken(limits, "r1")
    assert taken(limits, "r2") and taken(limits, "r3")
    # r1 was forgotten for r3: it starts again with a full budget, which the one for all bounds.
    assert taken(limits, "r1")

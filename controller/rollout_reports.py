"""``POST /serving/rollout-reports``: what serving replicas counted for each rollout.

A replica posts its totals per rollout (``wire.rollout_report``) about once a second, with the
serving token; the controller keeps the latest per (rollout, replica) in ``rollout_counts`` and
the stepper sums them (``controller.rollout_stepper``). Totals make a lost or repeated report
harmless. A report naming a rollout that is not running (it ended; the replica has not taken the
table that says so) is counted ``unknown`` and dropped: not an error.

Same credential and manners as the other replica reports (``controller.load_failures``), with
its own body bound (a POST carries every rollout a replica counts, with shadow samples) and its
own budget per claimed replica id (``controller.report_limits``' buckets, at this report's rate:
one a second, doubled, and 100 replicas' worth for all together).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from controller.guard import Gate
from controller.report_limits import ReportLimits
from controller.services import Services, services
from wire.rollout_report import RolloutReports

# Per replica: 10 at once, then twice its one a second; all replicas: 100 replicas' worth.
PER_REPLICA = (10, 120.0)
OVERALL = (2_000, 24_000.0)
# A report is at most ~60 KB (5 samples of 3 values, 2,000 characters each, escaped): 50
# reports a POST fit with room to spare.
MAX_BODY = 4 * 1024 * 1024


def _count_refused(svc: Services) -> None:
    svc.rollout_metrics.reports.labels("unauthorized").inc()


GATE = Gate(
    "/serving/rollout-reports",
    MAX_BODY,
    lambda settings: settings.serving_token,
    "serving",
    _count_refused,
)
router = APIRouter(prefix="/serving", max_body_size=MAX_BODY)


def rollout_report_limits(request: Request) -> ReportLimits:
    """The app's budget for these reports (a test may put its own on app.state)."""
    state = request.app.state
    limits: ReportLimits | None = getattr(state, "rollout_report_limits", None)
    if limits is None:
        limits = state.rollout_report_limits = ReportLimits(
            per_replica=PER_REPLICA, overall=OVERALL
        )
    return limits


@router.post("/rollout-reports", response_model=None)
async def report_rollout_counts(
    body: RolloutReports,
    request: Request,
    svc: Annotated[Services, Depends(services)],
    limits: Annotated[ReportLimits, Depends(rollout_report_limits)],
) -> dict[str, Any] | JSONResponse:
    refused = limits.refuse(body.replica_id, request.url.path)
    if refused is not None:
        svc.rollout_metrics.reports.labels("limited").inc()
        return refused
    outcome = await asyncio.to_thread(svc.rollouts.record_counts, body.replica_id, body.reports)
    for result, count in outcome.items():
        svc.rollout_metrics.reports.labels(result).inc(count)
    return outcome

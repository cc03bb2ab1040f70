"""The admin API of rollouts, behind the admin token (``controller.admin``'s gate).

- ``POST /admin/models/{name}/rollouts``: start one (candidate, canary steps in percent, hold
  per step, minimum requests per step, shadow share, thresholds);
- ``GET /admin/models/{name}/rollout``: the running (else the latest) rollout: step, weights,
  counts, gates, sampled disagreements;
- ``POST /admin/models/{name}/rollout/abort`` and ``.../promote`` (promote now, gates or not).

As every admin change, the new routing table is published before the answer (``published``).
Refusals are problem+json: 409 ``rollout-refused`` naming the field (the candidate is not live
or is the default, a rollout is already running, none is running), 422 for a bad request.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from controller import commands
from controller.admin import GATE
from controller.rollout_gates import judge
from controller.rollout_request import StartRollout
from controller.rollout_rows import ABORTED, RolloutRecord
from controller.rollout_schema import RUNNING
from controller.rollout_store import RolloutRefused
from controller.services import Services, services
from wire.problems import problem_response

router = APIRouter(prefix=GATE.prefix, max_body_size=GATE.max_body)
ADMIN = "admin"


def _refused(request: Request, exc: RolloutRefused) -> JSONResponse:
    return problem_response(
        409, slug="rollout-refused", title="Rollout refused", detail=str(exc),
        instance=request.url.path, field=exc.field, reason=exc.reason,
    )  # fmt: skip


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


async def status(svc: Services, r: RolloutRecord) -> dict[str, Any]:
    """A rollout as the admin API and the CLI show it."""
    running = r.state == RUNNING
    totals = await asyncio.to_thread(svc.rollouts.totals, r) if running else None
    samples = await asyncio.to_thread(svc.rollouts.samples, r) if running else []
    replicas = await asyncio.to_thread(svc.rollouts.replicas, r) if running else 0
    counted = totals - r.step_start if totals is not None else None
    window = counted.to_json() if counted is not None else None
    # The gates as they would be judged on this step's counts now (the step ends when its hold
    # time and its requests are both reached).
    now = (
        judge(counted, totals, r.thresholds, shadow=r.shadow > 0)
        if counted is not None and totals is not None
        else []
    )
    held = (datetime.now(UTC) - r.step_started_at).total_seconds() if running else None
    return {
        "id": r.id,
        "model": r.model,
        "candidate": r.candidate,
        "default_version": r.default_version,
        "state": r.state,
        "reason": r.reason,
        "actor": r.actor,
        "started_at": _iso(r.created_at),
        "ended_at": _iso(r.ended_at),
        "steps": [round(s * 100, 6) for s in r.steps],
        "step": r.step,
        "weight": r.weight,
        "shadow": r.shadow,
        "step_started_at": _iso(r.step_started_at),
        "step_held_s": held,
        "step_s": r.hold_s,
        "min_requests": r.min_requests,
        "thresholds": r.thresholds.model_dump(mode="json"),
        # This step's counts so far, the whole rollout's, and how many replicas reported.
        "window": window,
        "gates_now": [g.to_json() for g in now],
        "totals": totals.to_json() if totals is not None else None,
        "replicas_reporting": replicas,
        "history": r.history,
        "disagreements": samples,
    }


async def _running(svc: Services, name: str) -> RolloutRecord:
    await asyncio.to_thread(commands.load, svc.store, name)  # 404 for an unknown model
    r = await asyncio.to_thread(svc.rollouts.latest, name)
    if r is None or r.state != RUNNING:
        raise RolloutRefused("model", f"no rollout of '{name}' is running")
    return r


async def _answer(svc: Services, name: str, changed: bool) -> dict[str, Any]:
    published = await svc.publish_change(name, ADMIN) if changed else True
    latest = await asyncio.to_thread(svc.rollouts.latest, name)
    assert latest is not None
    return {**await status(svc, latest), "published": published}


@router.post("/models/{name}/rollouts", response_model=None, status_code=201)
async def start_rollout(
    name: str, body: StartRollout, request: Request, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any] | JSONResponse:
    spec = body.spec()
    try:
        r = await asyncio.to_thread(svc.rollouts.start, name, spec, ADMIN)
    except RolloutRefused as exc:
        return _refused(request, exc)
    svc.rollout_metrics.started.inc()
    await asyncio.to_thread(svc.rollout_stepper.effect, r, "started")
    return await _answer(svc, name, True)


@router.get("/models/{name}/rollout", response_model=None)
async def get_rollout(
    name: str, request: Request, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any] | JSONResponse:
    await asyncio.to_thread(commands.load, svc.store, name)
    r = await asyncio.to_thread(svc.rollouts.latest, name)
    if r is None:
        return problem_response(
            404, slug="not-found", title="Not found", instance=request.url.path,
            detail=f"registered model '{name}' has had no rollout",
        )  # fmt: skip
    return await status(svc, r)


@router.post("/models/{name}/rollout/abort", response_model=None)
async def abort_rollout(
    name: str, request: Request, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any] | JSONResponse:
    try:
        r = await _running(svc, name)
    except RolloutRefused as exc:
        return _refused(request, exc)
    done = await asyncio.to_thread(
        lambda: svc.rollout_stepper.end(r, ABORTED, "by-hand", "aborted by admin", actor=ADMIN)
    )
    return await _answer(svc, name, done is not None)


@router.post("/models/{name}/rollout/promote", response_model=None)
async def promote_rollout(
    name: str, request: Request, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any] | JSONResponse:
    done = None
    # A promotion claims the rollout at the step it read: one the stepper moved on meanwhile is
    # read again; one that ended meanwhile (an abort, a rollback) answers 409.
    for _ in range(2):
        try:
            r = await _running(svc, name)
        except RolloutRefused as exc:
            return _refused(request, exc)
        done = await asyncio.to_thread(
            svc.rollout_stepper.promote, r, "by-hand", "promoted by admin", ADMIN
        )
        if done is not None:
            break
    return await _answer(svc, name, done is not None)

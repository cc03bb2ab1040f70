"""``/healthz`` (the process answers), ``/readyz`` (it can do its job), ``/metrics``.

What gates readiness and why (a table published and MLflow's state are reported, gating only
with ``?full=true``): docs/architecture.md, "Readiness".

``role`` says whether this controller leads (runs the reconcile loop) or follows another on the
same PostgreSQL (``controller/leadership.py``); a follower is ready: it answers the long-poll,
reads and the admin API. The loops checked are the ones its role runs.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.database import is_migrated
from controller.services import Services, services

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _database(svc: Services) -> str:
    try:
        return "ok" if is_migrated(svc.engine) else "not migrated"
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"


async def _checks(svc: Services, *, full: bool) -> dict[str, str]:
    checks: dict[str, str] = {"database": await asyncio.to_thread(_database, svc)}
    # Without ``full``, the last answer of a ping that may still be in flight: a hung MLflow
    # must not make readiness slow (controller.probe).
    checks["registry"] = await svc.registry_probe.check(fresh=full)
    if svc.settings.webhook_url:
        checks["webhook"] = "ok" if svc.webhook_id else "not registered yet"
    checks["routing_table"] = _routing_table(svc)
    for name, task in svc.loops.items():
        checks[f"{name}_loop"] = "stopped" if task.done() else "ok"
    return checks


def _routing_table(svc: Services) -> str:
    if svc.broadcaster.current is not None:
        return "ok"
    if "worker" in svc.loops and not svc.worker.primed:
        # A new epoch's first table waits for every listed model (controller/priming.py).
        return "not published yet: priming"
    return "not published yet"


# Reported by /readyz, gating only with ?full=true: none says whether this controller can
# take webhooks and answer the long-poll (docs/architecture.md, "Readiness").
_REPORTED_CHECKS = frozenset({"registry", "webhook", "routing_table"})


@router.get("/readyz")
async def readyz(
    svc: Annotated[Services, Depends(services)], full: Annotated[bool, Query()] = False
) -> JSONResponse:
    checks = await _checks(svc, full=full)
    ready = all(v == "ok" for k, v in checks.items() if full or k not in _REPORTED_CHECKS)
    body: dict[str, Any] = {
        "status": "ready" if ready else "not ready",
        "role": svc.leadership.role.value,
        "role_since": datetime.fromtimestamp(svc.leadership.since, UTC).isoformat(
            timespec="milliseconds"
        ),
        "checks": checks,
    }
    if ready:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})


@router.get("/metrics")
async def metrics(svc: Annotated[Services, Depends(services)]) -> Response:
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

"""The admin REST API, behind a bearer token compared in constant time.

Changes go through ``controller.commands`` (one transaction each); the new routing table is
published before the answer, so a 200 means the serving app is being told.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from controller import commands
from controller.compatibility import Policy
from controller.records import ModelRecord
from controller.services import Services, services


def require_token(request: Request, svc: Annotated[Services, Depends(services)]) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected = svc.settings.admin_token.get_secret_value()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        raise HTTPException(
            401, "a valid admin bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )


router = APIRouter(prefix="/admin", dependencies=[Depends(require_token)])


class PinDefault(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str


class SetPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Policy


def _summary(m: ModelRecord) -> dict[str, Any]:
    counts = {"live": 0, "quarantined": 0, "pending": 0}
    for v in m.versions.values():
        counts[v.state.value] += 1
    return {"name": m.name, "default_version": m.default_version, "policy": m.policy, **counts}


def _detail(m: ModelRecord, svc: Services) -> dict[str, Any]:
    return {
        "name": m.name,
        "default_version": m.default_version,
        "policy": m.policy,
        "contract": m.contract,
        "last_webhook_at": svc.last_webhook_at.get(m.name),
        "versions": [
            {
                "version": v.version,
                "state": v.state.value,
                "reasons": v.reasons,
                "has_signature": v.signature is not None if v.signature_read else None,
                "decided_at": v.decided_at.isoformat() if v.decided_at else None,
                "source": v.source,
            }
            for v in m.sorted_versions()
        ],
    }


@router.get("/models")
async def list_models(svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
    models = await asyncio.to_thread(svc.store.all_models)
    return {"models": [_summary(m) for m in sorted(models, key=lambda m: m.name)]}


@router.get("/models/{name}")
async def get_model(name: str, svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
    return _detail(await asyncio.to_thread(commands.load, svc.store, name), svc)


@router.put("/models/{name}/default")
async def pin_default(
    name: str, body: PinDefault, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any]:
    decided = await asyncio.to_thread(commands.pin_default, svc.store, name, body.version)
    await svc.worker.publish()
    return _detail(decided, svc)


@router.put("/models/{name}/policy")
async def set_policy(
    name: str, body: SetPolicy, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any]:
    decided = await asyncio.to_thread(commands.set_policy, svc.store, name, body.policy)
    await svc.worker.publish()
    return _detail(decided, svc)


@router.post("/models/{name}/reconcile", status_code=202)
async def reconcile_model(name: str, svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
    svc.worker.enqueue(name)
    return {"status": "queued", "models": [name]}


@router.post("/reconcile", status_code=202)
async def reconcile_all(svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
    await svc.worker.resync_once()
    return {"status": "queued"}

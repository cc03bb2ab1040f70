"""The admin REST API, behind a bearer token compared in constant time.

Pinning the default version changes the model's contract; every version is then decided again
against it, in the same transaction, and the new table is published before the answer.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from controller.compatibility import Policy
from controller.decisions import decide_all
from controller.exceptions import InvalidRequest, NotFound
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


def _load(svc: Services, name: str) -> ModelRecord:
    record = svc.store.load_model(name)
    if record is None:
        raise NotFound(f"registered model '{name}' is not known to sigserve")
    return record


@router.get("/models")
async def list_models(svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
    models = await asyncio.to_thread(svc.store.all_models)
    return {"models": [_summary(m) for m in sorted(models, key=lambda m: m.name)]}


@router.get("/models/{name}")
async def get_model(name: str, svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
    return _detail(await asyncio.to_thread(_load, svc, name), svc)


def _pin(svc: Services, name: str, version: str) -> ModelRecord:
    with svc.store.write_lock:
        record = _load(svc, name)
        target = record.versions.get(version)
        if target is None:
            raise NotFound(f"registered model '{name}' has no version '{version}'")
        if not target.signature_read:
            raise InvalidRequest("version", f"version {version}'s signature has not been read yet")
        if target.signature is None:
            raise InvalidRequest(
                "version",
                f"version {version} has no signature; the default defines the contract, "
                "so it needs one",
            )
        pinned = replace(record, default_version=version, contract=target.signature)
        decided = decide_all(pinned, datetime.now(UTC))
        svc.store.save_model(decided)
        return decided


@router.put("/models/{name}/default")
async def pin_default(
    name: str, body: PinDefault, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any]:
    decided = await asyncio.to_thread(_pin, svc, name, body.version)
    await svc.worker.publish()
    return _detail(decided, svc)


def _set_policy(svc: Services, name: str, policy: Policy) -> ModelRecord:
    with svc.store.write_lock:
        record = replace(_load(svc, name), policy=policy.value)
        decided = decide_all(record, datetime.now(UTC))
        svc.store.save_model(decided)
        return decided


@router.put("/models/{name}/policy")
async def set_policy(
    name: str, body: SetPolicy, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any]:
    decided = await asyncio.to_thread(_set_policy, svc, name, body.policy)
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

"""``GET /routing-table``: the long-poll the serving app's ingress replicas hold open.

``after`` and ``epoch`` say which table the caller has; the answer is 200 with a newer table as
soon as there is one (at once if there is already, or if the caller's epoch is not this
controller's), or 204 when ``timeout`` seconds pass with none. The table
holds no secrets (names, states, reasons, signatures), so it needs no token.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse

from controller.services import Services, services

router = APIRouter()


@router.get("/routing-table", response_model=None)
async def routing_table(
    svc: Annotated[Services, Depends(services)],
    # Bounded: a caller could otherwise push the revision (via catch_up) past what the
    # database's integer column holds, and no later table could be published.
    after: Annotated[int, Query(ge=-1, le=2**31 - 2)] = -1,
    timeout: Annotated[float, Query(ge=0)] = 0.0,
    epoch: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    wait = min(timeout, svc.settings.long_poll_max_s)
    held = svc.broadcaster.current
    behind = held is not None and epoch == held.epoch and after > held.revision
    if behind and svc.table_sync is not None and await svc.table_sync.refresh():
        # Another controller on this database published it (this one had not loaded it yet).
        held = svc.broadcaster.current
    if held is not None and epoch == held.epoch and after > held.revision:
        # The caller saw a later revision of this database than it now has: it was restored
        # from a backup. Publish above what serving saw, so replicas take it.
        await svc.broadcaster.offer(await asyncio.to_thread(svc.store.catch_up, after))
    table = await svc.broadcaster.newer_than(after, epoch, wait)
    if table is None:
        return Response(status_code=204)
    return JSONResponse(table.model_dump(mode="json"))

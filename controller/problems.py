"""RFC 9457 problem+json: the one boundary where controller errors become responses."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from controller.exceptions import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PinRefused,
    RegisteredModelGone,
    RegistryRefused,
    RegistryUnavailable,
    StaleReport,
    WebhookRejected,
)

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field(e["loc"]), "reason": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
        return problem(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(InvalidRequest)
    async def _invalid_request(_: Request, exc: InvalidRequest) -> JSONResponse:
        errors = [{"field": exc.field, "reason": exc.reason}]
        return problem(422, "Invalid request", str(exc), errors=errors)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return problem(404, "Not found", str(exc))

    @app.exception_handler(PayloadTooLarge)
    async def _too_large(_: Request, exc: PayloadTooLarge) -> JSONResponse:
        return problem(413, "Payload too large", str(exc))

    @app.exception_handler(PinRefused)
    async def _pin_refused(_: Request, exc: PinRefused) -> JSONResponse:
        return problem(409, "Pin refused", str(exc), reasons=exc.reasons)

    @app.exception_handler(StaleReport)
    async def _stale(_: Request, exc: StaleReport) -> JSONResponse:
        return problem(409, "Stale report", str(exc))

    @app.exception_handler(WebhookRejected)
    async def _rejected(_: Request, exc: WebhookRejected) -> JSONResponse:
        return problem(401, "Webhook rejected", str(exc))

    @app.exception_handler(RegisteredModelGone)
    async def _gone(_: Request, exc: RegisteredModelGone) -> JSONResponse:
        return problem(404, "Not found", f"registered model '{exc}' is not in the registry")

    @app.exception_handler(RegistryRefused)
    async def _refused(_: Request, exc: RegistryRefused) -> JSONResponse:
        return problem(502, "Registry refused", f"the MLflow registry refused: {exc}")

    @app.exception_handler(RegistryUnavailable)
    async def _unavailable(_: Request, exc: RegistryUnavailable) -> JSONResponse:
        return problem(503, "Registry unavailable", str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(OperationalError)
    async def _database_busy(request: Request, exc: OperationalError) -> JSONResponse:
        # A lock held past the busy timeout, a lost connection: temporary, and the
        # transaction was rolled back, so nothing of the request was written. MLflow retries
        # a 503 delivery; an admin client may send the same call again.
        log.warning(
            "database unavailable on %s %s: %s", request.method, request.url.path, exc.orig
        )
        return problem(
            503,
            "Database unavailable",
            "the controller's database is locked or unreachable; nothing was changed, "
            "try again",
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return problem(
            exc.status_code, str(exc.detail), str(exc.detail), headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "Internal error", "the controller failed; see its log")

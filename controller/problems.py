"""RFC 9457 problem+json: the one boundary where controller errors become responses.

The dialect is ``wire.problems`` (the serving app's too). Slugs, after
``urn:sigserve:problem:``: ``invalid-request`` (422, with ``errors``), ``not-found`` (404),
``payload-too-large`` (413), ``pin-refused`` and ``stale-report`` (409; a pin's ``reasons``),
``unauthorized`` and ``webhook-rejected`` (401), ``registry-refused`` (502),
``registry-unavailable``, ``database-unavailable`` and ``too-many-polls`` (503, ``Retry-After``),
``too-many-reports`` (429, ``Retry-After``: ``controller.report_limits``), ``internal-error``
(500, never a stack trace). Starlette's own (an unknown route, a wrong method) stay
``about:blank``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

from controller.exceptions import (
    ControllerError,
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
from wire.problems import problem_response

log = logging.getLogger(__name__)

# Errors answered with their message as the detail: status, slug, title.
_PLAIN: dict[type[ControllerError], tuple[int, str, str]] = {
    NotFound: (404, "not-found", "Not found"),
    PayloadTooLarge: (413, "payload-too-large", "Payload too large"),
    StaleReport: (409, "stale-report", "Stale report"),
    WebhookRejected: (401, "webhook-rejected", "Webhook rejected"),
}


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _invalid(request: Request, errors: list[dict[str, str]], detail: str) -> JSONResponse:
    return problem_response(
        422, slug="invalid-request", title="Invalid request", detail=detail,
        instance=request.url.path, errors=errors,
    )  # fmt: skip


def too_large(instance: str, limit: int | None) -> JSONResponse:
    """The 413 of a body past its route's bound, declared or counted as it streamed."""
    bound = f"at most {limit} bytes" if limit is not None else "a smaller body"
    return problem_response(
        413, slug="payload-too-large", title="Payload too large",
        detail=f"the request body is too large: this route takes {bound}", instance=instance,
    )  # fmt: skip


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field(e["loc"]), "reason": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
        return _invalid(request, errors, detail)

    @app.exception_handler(InvalidRequest)
    async def _invalid_request(request: Request, exc: InvalidRequest) -> JSONResponse:
        return _invalid(request, [{"field": exc.field, "reason": exc.reason}], str(exc))

    async def _plain(request: Request, exc: Exception) -> JSONResponse:
        status, slug, title = _PLAIN[type(exc)]  # type: ignore[index]
        return problem_response(
            status, slug=slug, title=title, detail=str(exc), instance=request.url.path
        )

    for error in _PLAIN:
        app.add_exception_handler(error, _plain)

    @app.exception_handler(PinRefused)
    async def _pin_refused(request: Request, exc: PinRefused) -> JSONResponse:
        return problem_response(
            409, slug="pin-refused", title="Pin refused", detail=str(exc),
            instance=request.url.path, reasons=exc.reasons,
        )  # fmt: skip

    @app.exception_handler(RegisteredModelGone)
    async def _gone(request: Request, exc: RegisteredModelGone) -> JSONResponse:
        return problem_response(
            404, slug="not-found", title="Not found",
            detail=f"registered model '{exc}' is not in the registry", instance=request.url.path,
        )  # fmt: skip

    @app.exception_handler(RegistryRefused)
    async def _refused(request: Request, exc: RegistryRefused) -> JSONResponse:
        return problem_response(
            502, slug="registry-refused", title="Registry refused",
            detail=f"the MLflow registry refused: {exc}", instance=request.url.path,
        )  # fmt: skip

    @app.exception_handler(RegistryUnavailable)
    async def _unavailable(request: Request, exc: RegistryUnavailable) -> JSONResponse:
        return problem_response(
            503, slug="registry-unavailable", title="Registry unavailable", detail=str(exc),
            instance=request.url.path, retry_after=5,
        )  # fmt: skip

    @app.exception_handler(OperationalError)
    async def _database_busy(request: Request, exc: OperationalError) -> JSONResponse:
        # A lock held past the busy timeout, a lost connection: temporary, and the
        # transaction was rolled back, so nothing of the request was written. MLflow retries
        # a 503 delivery; an admin client may send the same call again.
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
        return problem_response(
            503, slug="database-unavailable", title="Database unavailable",
            detail="the controller's database is locked or unreachable; nothing was changed, "
            "try again",
            instance=request.url.path, retry_after=2,
        )  # fmt: skip

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 413:
            # A router's ``max_body_size`` counted a streamed body past it (controller.guard).
            return too_large(request.url.path, request.scope.get(MAX_BODY_SIZE_SCOPE_KEY))
        # The long-poll's token check (401), and Starlette's own: an unknown route (404), a
        # wrong method (405).
        return problem_response(
            exc.status_code,
            slug="unauthorized" if exc.status_code == 401 else None,
            detail=str(exc.detail),
            instance=request.url.path,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500, slug="internal-error", title="Internal error",
            detail="the controller failed; see its log", instance=request.url.path,
        )  # fmt: skip

"""RFC 9457 problem details: the one place errors become HTTP responses.

Every error answer of the serving app is ``application/problem+json``:

    {"type": "urn:sigserve:problem:version-quarantined", "title": "...", "status": 409,
     "detail": "...", "instance": "/models/echo/versions/3/serve", ...extensions}

Extensions: ``errors`` ([{"field", "reason"}]) on 422, ``reasons`` on 409, ``model`` and
``version`` where one is known. A 503 also carries a ``Retry-After`` header. The ``type`` URIs
are URNs: stable identifiers to switch on, not pages to fetch. Errors that are not ours (an
unknown route, a wrong method) keep ``about:blank``; anything unexpected becomes a bare 500
problem, logged here and never showing a stack trace to the client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serving.exceptions import ProblemError

logger = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:sigserve:problem:"


def problem_response(
    status: int,
    *,
    type_: str = "about:blank",
    title: str | None = None,
    detail: str | None = None,
    instance: str | None = None,
    retry_after: int | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extensions)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        exc.status,
        type_=TYPE_PREFIX + exc.slug,
        title=exc.title,
        detail=exc.detail,
        instance=request.url.path,
        retry_after=exc.retry_after,
        **exc.extensions,
    )


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    response = problem_response(
        exc.status_code,
        detail=exc.detail if isinstance(exc.detail, str) else None,
        instance=request.url.path,
    )
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    return response


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]} for e in exc.errors()
    ]
    return problem_response(
        422,
        type_=TYPE_PREFIX + "invalid-request",
        detail="the request does not fit this endpoint",
        instance=request.url.path,
        errors=errors,
    )


async def _on_anything(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, detail="an internal error occurred", instance=request.url.path)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(HTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_validation)
    # Starlette runs this one outermost, after the response middleware: it also catches errors
    # raised by other handlers. It re-raises after answering, which only the server sees.
    app.add_exception_handler(Exception, _on_anything)

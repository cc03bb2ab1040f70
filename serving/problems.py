"""RFC 9457 problem details: the one place the serving app's errors become HTTP responses.

Every error answer is ``application/problem+json`` in the dialect of ``wire.problems``, e.g.
``urn:sigserve:problem:version-quarantined`` with the ``reasons``; the slugs are those of
``serving.exceptions``, plus ``invalid-request`` for a request that does not fit the endpoint.
Errors that are not ours (an unknown route, a wrong method) keep ``about:blank``; anything
unexpected becomes a bare 500 problem, logged here and never showing a stack trace. A model
that does not answer within its deadline is a 504 ``predict-timeout`` like any other problem
(``serving.deadlines``), never a request left hanging.

Every answer also carries ``error_code``, the code MLflow's own servers give for the same kind
of failure (``BAD_REQUEST``, ``INVALID_PARAMETER_VALUE``, ``RESOURCE_DOES_NOT_EXIST``...), so a
client written against ``mlflow models serve`` that switches on it keeps working; MLflow's
``message`` and ``stack_trace`` are not copied (they repeat the request's data and internals).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serving.exceptions import ProblemError
from wire.problems import problem_response

logger = logging.getLogger(__name__)

# MLflow's codes (mlflow.protos.databricks_pb2) by status, as MLflow's servers pair them, with
# 4xx codes of its vocabulary where it has no status of its own (413, 415, 422).
_ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "ENDPOINT_NOT_FOUND",
    409: "RESOURCE_CONFLICT",
    413: "BAD_REQUEST",
    415: "BAD_REQUEST",
    422: "INVALID_PARAMETER_VALUE",
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# A route that exists but names nothing the registry serves: MLflow's registry says this.
_SLUG_CODES = {
    "unknown-model": "RESOURCE_DOES_NOT_EXIST",
    "unknown-version": "RESOURCE_DOES_NOT_EXIST",
}


def error_code(status: int, slug: str | None = None) -> str:
    """MLflow's ``error_code`` for a problem of ``status`` (and sigserve ``slug``)."""
    if slug in _SLUG_CODES:
        return _SLUG_CODES[slug]
    return _ERROR_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    response = problem_response(
        exc.status,
        slug=exc.slug,
        title=exc.title,
        detail=exc.detail,
        instance=request.url.path,
        retry_after=exc.retry_after,
        error_code=error_code(exc.status, exc.slug),
        **exc.extensions,
    )
    # An exception that crossed from a Ray process may predate the attribute.
    response.headers.update(getattr(exc, "headers", None) or {})
    return response


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    response = problem_response(
        exc.status_code,
        detail=exc.detail if isinstance(exc.detail, str) else None,
        instance=request.url.path,
        error_code=error_code(exc.status_code),
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
        slug="invalid-request",
        detail="the request does not fit this endpoint",
        instance=request.url.path,
        error_code=error_code(422),
        errors=errors,
    )


async def _on_anything(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        500,
        detail="an internal error occurred",
        instance=request.url.path,
        error_code=error_code(500),
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(HTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_validation)
    # Starlette runs this one outermost, after the response middleware: it also catches errors
    # raised by other handlers. It re-raises after answering, which only the server sees.
    app.add_exception_handler(Exception, _on_anything)

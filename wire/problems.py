"""RFC 9457 problem details, the one dialect of both services' error answers.

    {"type": "urn:sigserve:problem:<slug>", "title": "...", "status": 409, "detail": "...",
     "instance": "/path", ...extensions}

The ``type`` URIs are URNs: stable identifiers a client switches on, not pages to fetch; the
slugs of each service are listed in its ``problems`` module. Errors that are not sigserve's own
(an unknown route, a wrong method) keep ``about:blank``. Extensions: ``errors``
([{"field", "reason"}]) on 422, ``reasons`` on 409, ``model`` and ``version`` where one is known.
A 503 also carries a ``Retry-After`` header.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:sigserve:problem:"


def problem_response(
    status: int,
    *,
    slug: str | None = None,
    title: str | None = None,
    detail: str | None = None,
    instance: str | None = None,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    """A problem+json answer; ``slug`` names the problem (``about:blank`` without one)."""
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + slug if slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extensions)
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["Retry-After"] = str(retry_after)
    return JSONResponse(
        body, status_code=status, media_type=MEDIA_TYPE, headers=all_headers or None
    )

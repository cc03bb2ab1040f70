"""Whether a request carries a bearer token: the admin token on ``/admin``, the serving
replicas' (``SIGSERVE_SERVING_TOKEN``) on the routes serving calls.

One check for every credential: constant-time, and as slow with no token configured as with
one, so the answer's timing says nothing about the configuration either.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr
from starlette.requests import HTTPConnection


def presents_bearer(request: HTTPConnection, expected: SecretStr | None) -> bool:
    """Only the headers are read: ``controller.guard`` asks before any of the body is."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # Compared even when no token is configured, against one nobody holds.
    wanted = expected.get_secret_value() if expected is not None else "\0" * 32
    matches = hmac.compare_digest(token.encode(), wanted.encode())
    # An empty token is nobody's, whatever the settings hold (they refuse one: settings.py).
    presented = bool(token) and scheme.lower() == "bearer"
    return expected is not None and bool(wanted) and presented and matches

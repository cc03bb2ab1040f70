"""The credential and the body bound of a route prefix, checked before any of the body is read.

FastAPI reads and parses a route's body before it runs the route's dependencies, so a token
checked in a dependency comes after the body has cost its memory (issue 16: one
unauthenticated 64 MiB ``PUT`` grew the controller by 190 MiB). This middleware answers from
the headers alone: ``401`` without the credential, ``413`` for a declared ``Content-Length``
past the bound. A body sent without a length (chunked) is counted as it streams by the
routers' own ``max_body_size`` (Starlette's limit, the same number), whose refusal
``controller.problems`` answers as the same 413.

It sits in front of the routers rather than in them: Starlette's limit answers a declared
length past it with a plain-text 413 in place of whatever the route answers, the 401 included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import SecretStr
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from controller.problems import too_large
from controller.services import Services
from controller.serving_auth import presents_bearer
from controller.settings import ControllerSettings
from wire.problems import problem_response


@dataclass(frozen=True)
class Gate:
    """What every request under ``prefix`` must show before its body is read."""

    prefix: str
    # The most bytes a body may have; the router under ``prefix`` is given the same number.
    max_body: int
    # The bearer token the prefix needs, from the settings (None: nobody is let in).
    credential: Callable[[ControllerSettings], SecretStr | None]
    # Whose token it is, for the 401's detail ("admin", "serving").
    holder: str
    # Told of each refusal (a metric), if anything is to be.
    on_refused: Callable[[Services], None] | None = None

    def covers(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")


class Gates:
    """ASGI middleware: the first gate whose prefix covers the path is checked."""

    def __init__(self, app: ASGIApp, gates: Sequence[Gate]) -> None:
        self.app = app
        self.gates = tuple(gates)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gate = None
        if scope["type"] == "http":
            gate = next((g for g in self.gates if g.covers(scope["path"])), None)
        if gate is None:
            await self.app(scope, receive, send)
            return
        # The connection's headers only: ``receive`` is never called here.
        request = HTTPConnection(scope)
        svc: Services = request.app.state.services
        if not presents_bearer(request, gate.credential(svc.settings)):
            if gate.on_refused is not None:
                gate.on_refused(svc)
            refused = problem_response(
                401, slug="unauthorized", detail=f"a valid {gate.holder} bearer token is required",
                instance=scope["path"], headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
            await refused(scope, receive, send)
            return
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > gate.max_body:
            await too_large(scope["path"], gate.max_body)(scope, receive, send)
            return
        await self.app(scope, receive, send)

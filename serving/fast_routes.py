"""The hot POST routes, dispatched without FastAPI's per-request machinery.

A request that runs a model (``/models/{name}[/versions/{version}]/serve`` and
``.../invocations``, ``/v2/models/{name}[/versions/{version}]/infer``, ``/invocations``) is the
whole of a replica's load, and at one connection its CPU is its latency. FastAPI spends a good
part of it on things these routes do not use: three layers of middleware, each wrapping
``send``, a walk over every route's pattern, dependency solving for a path parameter that is a
plain string, an exit stack per request. ``FastRoutedAPI`` is the FastAPI app with one change:
a POST whose path matches one of ``HOT`` calls that route's endpoint (the very function FastAPI
would call, with the same arguments) and sends its response, and turns an exception into an
answer through the app's own exception handlers, as Starlette's middleware would
(``serving.problems``: problem+json, never a 500 with a trace). Everything else (every other
route and method, OpenAPI, the lifespan, a path that only matches with a trailing slash) goes
through FastAPI unchanged, and the routes stay registered there, so the schema, Ray Serve's
route names for its metrics and a test client see the same app. Measured in
``docs/benchmarks.md`` ("The one-connection path").

The fast path is taken only while the app has no middleware of its own: one added later
(``add_middleware``) would be skipped by it, so then every request goes through FastAPI.

``routes`` (what Ray Serve's replica walks, pattern by pattern, for every request to name its
route in its metrics) lists the hot routes first: found after one to seven patterns instead of
up to twenty-nine, measured in ``docs/benchmarks.md`` ("16 connections on every path"). It is
the router's own list, put in that order (the rest in theirs) when it changed, so whatever
changes ``app.routes`` (``append``, or Ray Serve's class-based view, which removes and re-adds
its routes through it) changes the routes FastAPI answers, as on any FastAPI app. No other
route's pattern matches a hot route's path (the ``/v2/{path:path}`` fallback, which would,
comes after them either way), so every request is answered, and named, as in the order the
routes were added. The OpenAPI document, built from ``routes``, lists the hot routes' paths
first too. The hot routes the fast path dispatches, found at the first POST, are found again
at the POST after ``routes`` saw the list change (Ray Serve reads it for every request); a hot
route taken out of ``app.router.routes`` while nothing reads ``routes`` is still dispatched.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

# Route templates (as registered) that run a model: the only ones worth a path of their own.
HOT = frozenset({
    "/models/{name}/serve",
    "/models/{name}/versions/{version}/serve",
    "/models/{name}/invocations",
    "/models/{name}/versions/{version}/invocations",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
    "/invocations",
})  # fmt: skip

Endpoint = Callable[..., Awaitable[Response]]


class FastRoutedAPI(FastAPI):
    """FastAPI, with the routes in ``HOT`` dispatched directly (module docstring)."""

    _hot: list[tuple[re.Pattern[str], Endpoint, APIRoute]] | None = None
    # The router's list as last put in order, and a copy of what it held then.
    _ordered: tuple[list[BaseRoute], list[BaseRoute]] | None = None

    @property
    def routes(self) -> list[BaseRoute]:
        """The router's list of routes, the hot ones first (module docstring)."""
        listed = self.router.routes
        ordered = self._ordered
        # Whatever changed the list, through ``routes`` or the router, is seen here; on the
        # same objects ``!=`` is a C loop over ~30 pointers (0.14 us an access, as before).
        if ordered is None or ordered[0] is not listed or ordered[1] != listed:
            hot = [r for r in listed if isinstance(r, APIRoute) and r.path in HOT]
            rest = [r for r in listed if not (isinstance(r, APIRoute) and r.path in HOT)]
            if hot + rest != listed:
                # A new list rather than the old one reordered: a walk over it under way (the
                # router matching a request in another thread) goes on over the old one.
                listed = hot + rest
                self.router.routes = listed
            self._ordered = (listed, list(listed))
            # The hot routes dispatched are made again at the next POST, from what is there.
            self._hot = None
        return listed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not self.user_middleware:
            hot = self._hot if self._hot is not None else self._hot_routes()
            # The path as Starlette's and FastAPI's routers match it (root_path taken off).
            path = get_route_path(scope)
            for pattern, endpoint, route in hot:
                if (match := pattern.match(path)) is not None:
                    await self._dispatch(scope, receive, send, endpoint, route, match.groupdict())
                    return
        await super().__call__(scope, receive, send)

    def _hot_routes(self) -> list[tuple[re.Pattern[str], Endpoint, APIRoute]]:
        """The hot routes as registered, in their order; built at the first POST, once every
        route exists. Only routes whose endpoint takes its path parameters as plain strings
        and the request, and nothing FastAPI would have to solve, qualify."""
        hot = []
        for route in self.router.routes:
            if (
                isinstance(route, APIRoute)
                and route.path in HOT
                and "POST" in (route.methods or ())
                and _plain(route)
            ):
                hot.append((route.path_regex, route.endpoint, route))
        self._hot = hot
        return hot

    async def _dispatch(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        endpoint: Endpoint,
        route: APIRoute,
        params: dict[str, str],
    ) -> None:
        scope["app"] = self
        scope["path_params"] = params
        scope["route"] = route
        scope["endpoint"] = endpoint
        request = Request(scope, receive, send)
        # Whether the answer may have begun: then an error can only be raised, not answered.
        started = False
        try:
            response = await endpoint(**params, request=request)
            started = True
            await response(scope, receive, send)
        except Exception as exc:
            # What Starlette's ExceptionMiddleware (a handler by type) and
            # ServerErrorMiddleware (the ``Exception`` handler, then re-raised for the server
            # to see) would do.
            handlers = self.exception_handlers
            handler = None
            if isinstance(exc, HTTPException):
                handler = handlers.get(exc.status_code)
            by_type = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
            handler = handler or by_type
            if handler is None or started:
                raise
            answer = handler(request, exc)
            if inspect.isawaitable(answer):
                answer = await answer
            if answer is not None:
                await answer(scope, receive, send)
            if by_type is handlers.get(Exception):
                raise
            exc.__traceback__ = None


def _plain(route: APIRoute) -> bool:
    """The endpoint takes its path parameters as ``str`` and a ``request``, nothing else: then
    calling it directly is what FastAPI's dependency solving would do."""
    dependant = route.dependant
    if dependant.dependencies or dependant.query_params or dependant.header_params:
        return False
    if dependant.cookie_params or dependant.body_params:
        return False
    if dependant.request_param_name != "request":
        return False
    if any(param.field_info.annotation is not str for param in dependant.path_params):
        return False
    return set(route.param_convertors) == {param.name for param in dependant.path_params} and all(
        type(c).__name__ == "StringConvertor" for c in route.param_convertors.values()
    )


__all__ = ["HOT", "FastRoutedAPI"]

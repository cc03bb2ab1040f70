"""The hot POST routes, dispatched without FastAPI's machinery (``serving.fast_routes``): the
same answers as FastAPI gives, byte for byte, and FastAPI's path untouched for the rest."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from serving.api import create_app
from serving.fast_routes import HOT
from serving.table_source import TableSource
from tests.unit.test_serving_api import TABLE, Controller, EchoBackend
from wire.routing_table import RoutingTable

# (method, path, body): every hot route, answered and refused, and routes that are not hot.
REQUESTS = [
    ("POST", "/models/echo/serve", [{"prompt": "a"}]),
    ("POST", "/models/echo/versions/2/serve", {"inputs": [{"prompt": "a"}]}),
    ("POST", "/models/echo/invocations", {"dataframe_records": [{"prompt": "a"}]}),
    ("POST", "/models/echo/versions/1/invocations", {"inputs": {"prompt": ["a"]}}),
    ("POST", "/invocations", {"dataframe_records": [{"prompt": "a"}]}),
    ("POST", "/v2/models/echo/infer", {"inputs": [
        {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}),
    ("POST", "/v2/models/echo/versions/2/infer", {"inputs": [
        {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}),
    ("POST", "/models/nope/serve", [{"prompt": "a"}]),  # 404, unknown model
    ("POST", "/models/echo/versions/3/serve", [{"prompt": "a"}]),  # 409, quarantined
    ("POST", "/models/echo/versions/4/invocations", {"inputs": [{"prompt": "a"}]}),  # 503
    ("POST", "/models/echo/serve", [{"wrong": "a"}]),  # 422, the contract
    ("POST", "/models/echo/serve", b"{not json"),  # 422, the body
    ("POST", "/models/echo/serve", [{"prompt": "boom"}]),  # 500, the model raised
    ("POST", "/v2/models/echo/versions/3/infer", {"inputs": []}),  # V2's own error form
    ("POST", "/models/echo/serve/", [{"prompt": "a"}]),  # a trailing slash: redirected
    ("GET", "/models/echo/serve", None),  # 405: not hot
    ("POST", "/models/echo", [{"prompt": "a"}]),  # 405
    ("GET", "/models/echo", None),
]  # fmt: skip


def app_for(table: RoutingTable) -> FastAPI:
    source = TableSource("http://controller", transport=httpx.MockTransport(Controller()))
    source._table = table  # type: ignore[attr-defined]  # a table already taken, no poll
    return create_app(source, EchoBackend(), default_model="echo", max_body_bytes=1 << 16)


async def call(app: Any, method: str, path: str, body: Any) -> tuple[int, list[Any], bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body else b""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "server": ("sigserve", 80), "client": ("127.0.0.1", 1),
        "headers": [(b"host", b"sigserve"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(raw)).encode())],
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # A 500 is re-raised for the server to log, after its answer was sent.
    with contextlib.suppress(Exception):
        await app(scope, receive, send)
    start = sent[0]
    return start["status"], start["headers"], b"".join(m.get("body", b"") for m in sent[1:])


def both(table: RoutingTable) -> list[tuple[Any, Any]]:
    """Each request's answer through the app as built and through FastAPI alone."""
    app = app_for(table)

    async def through_fastapi(scope: Any, receive: Any, send: Any) -> None:
        await FastAPI.__call__(app, scope, receive, send)

    async def run() -> list[tuple[Any, Any]]:
        return [
            (await call(app, *request), await call(through_fastapi, *request))
            for request in REQUESTS
        ]

    return asyncio.run(run())


def test_the_hot_routes_answer_as_fastapi_answers_them() -> None:
    for request, (fast, fastapi) in zip(REQUESTS, both(TABLE), strict=True):
        assert fast == fastapi, request
    statuses = [fast[0] for fast, _ in both(TABLE)]
    assert statuses == [
        200, 200, 200, 200, 200, 200, 200, 404, 409, 503, 422, 422, 500, 409, 307, 405, 405, 200
    ]


def test_every_route_that_runs_a_model_is_dispatched_without_fastapi() -> None:
    app = app_for(TABLE)

    async def run() -> None:
        for method, path, body in REQUESTS[:7]:
            assert (await call(app, method, path, body))[0] == 200

    asyncio.run(run())
    # Starlette builds its middleware stack at the first request that goes through it.
    assert app.middleware_stack is None
    assert sorted(route.path for _, _, route in app._hot or []) == sorted(  # type: ignore[attr-defined]
        [
            "/invocations",
            "/models/{name}/invocations",
            "/models/{name}/serve",
            "/models/{name}/versions/{version}/invocations",
            "/models/{name}/versions/{version}/serve",
            "/v2/models/{name}/infer",
            "/v2/models/{name}/versions/{version}/infer",
        ]
    )


@pytest.mark.parametrize("path", ["/models/echo/serve", "/v2/models/echo/infer"])
def test_a_middleware_added_later_sees_every_request(path: str) -> None:
    app = app_for(TABLE)

    @app.middleware("http")
    async def tag(request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["x-seen"] = "1"
        return response

    body = REQUESTS[0][2] if "serve" in path else REQUESTS[5][2]
    status, headers, _ = asyncio.run(call(app, "POST", path, body))
    assert status == 200
    assert (b"x-seen", b"1") in headers


def test_ray_names_every_route_as_before_after_fewer_patterns() -> None:
    # Ray Serve's replica names each request's route (its metrics' label) by walking
    # ``app.routes``; the hot routes listed first, it stops after at most seven patterns.
    from ray.serve._private.thirdparty.get_asgi_route_name import get_asgi_route_name

    app = app_for(TABLE)
    in_router_order = FastAPI()
    # The order the routes were added in: an app whose ``routes`` was never asked for.
    in_router_order.router = app_for(TABLE).router
    registered = list(app.router.routes)
    hot = [route for route in registered if getattr(route, "path", "") in HOT]
    assert len(hot) == 7
    assert app.routes[:7] == hot
    assert sorted(map(id, app.routes)) == sorted(map(id, registered))
    for method, path, _ in [*REQUESTS, ("PUT", "/v2/models/echo/infer", None),
                            ("GET", "/v2/models/echo/infer", None)]:  # fmt: skip
        scope = {"type": "http", "method": method, "path": path, "root_path": ""}
        assert get_asgi_route_name(app, scope) == get_asgi_route_name(in_router_order, scope)

    @app.get("/added-later")
    async def added() -> None: ...

    assert getattr(app.routes[-1], "path", "") == "/added-later"


def test_routes_is_the_routers_list_so_what_changes_it_is_answered() -> None:
    """``app.routes`` changed after it was walked (Ray Serve's class-based view removes its
    routes through it and adds them back; a user may append one) changes what is answered, as
    on any FastAPI app; a route the router's list swaps in is listed."""
    app = app_for(TABLE)
    assert len(app.routes) > 7  # walked, as Ray names the first request's route

    async def appended() -> dict[str, str]:
        return {"route": "appended"}

    async def replaced() -> dict[str, str]:
        return {"route": "replaced"}

    async def swapped() -> dict[str, str]:
        return {"route": "swapped"}

    app.routes.append(APIRoute("/appended", appended, methods=["GET"]))
    listed = next(r for r in app.routes if getattr(r, "path", "") == "/models")
    app.routes.remove(listed)
    again = APIRouter()
    again.add_api_route("/models", replaced, methods=["GET"])
    app.include_router(again)
    routes = app.router.routes
    healthz = next(i for i, r in enumerate(routes) if getattr(r, "path", "") == "/-/healthz")
    app.router.routes[healthz] = APIRoute("/-/healthz", swapped, methods=["GET"])  # same length

    async def run() -> list[tuple[int, bytes]]:
        answers = [await call(app, "GET", p, None) for p in ("/appended", "/models", "/-/healthz")]
        return [(status, body) for status, _, body in answers]

    assert asyncio.run(run()) == [
        (200, b'{"route":"appended"}'),
        (200, b'{"route":"replaced"}'),
        (200, b'{"route":"swapped"}'),
    ]
    assert [getattr(r, "endpoint", None) for r in app.routes].count(swapped) == 1
    assert all(getattr(r, "path", "") in HOT for r in app.routes[:7])
    assert app.routes is app.router.routes


def test_the_router_with_the_hot_routes_first_answers_as_in_the_order_they_were_added() -> None:
    """Every request through FastAPI's router (as when the app has a middleware) gets the same
    answer from the router put in ``routes``' order as from one in the order routes were added."""
    reordered, added = app_for(TABLE), app_for(TABLE)
    assert getattr(reordered.routes[0], "path", "") in HOT
    assert reordered.router.routes is reordered.routes

    async def run(app: Any) -> list[Any]:
        async def through_router(scope: Any, receive: Any, send: Any) -> None:
            await FastAPI.__call__(app, scope, receive, send)

        return [await call(through_router, *request) for request in REQUESTS]

    assert getattr(added.router.routes[0], "path", "") not in HOT  # never put in order
    assert asyncio.run(run(reordered)) == asyncio.run(run(added))


def test_a_hot_route_taken_out_after_the_first_post_is_no_longer_dispatched() -> None:
    app = app_for(TABLE)
    method, path, body = next(r for r in REQUESTS if r[1] == "/invocations")

    async def through_router(scope: Any, receive: Any, send: Any) -> None:
        await FastAPI.__call__(app, scope, receive, send)

    async def run() -> tuple[int, Any, Any]:
        first = await call(app, method, path, body)
        invocations = next(r for r in app.routes if getattr(r, "path", "") == path)
        app.routes.remove(invocations)
        assert invocations not in app.routes  # read, as Ray does to name the next request
        again = await call(app, method, path, body)
        return first[0], again, await call(through_router, method, path, body)

    status, fast, fastapi = asyncio.run(run())
    assert status == 200
    assert fast == fastapi and fast[0] != 200

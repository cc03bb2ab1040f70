"""The Open Inference Protocol ("V2", KServe's and Triton's REST protocol) over the same gate.

Routes (``install`` registers them; docs/architecture.md, "The Open Inference Protocol"):

    GET  /v2                                           server metadata
    GET  /v2/health/live, /v2/health/ready             live: always; ready: a table is held
    GET  /v2/models/{name}[/versions/{v}]              model metadata, from the contract
    GET  /v2/models/{name}[/versions/{v}]/ready        200 when that version is servable
    POST /v2/models/{name}[/versions/{v}]/infer        named tensors in, named tensors out

An inference request becomes a ``/serve`` body and runs through the API's own path (its
``answer`` and ``run``): one resolve, the contract's validation, the multiplexing, the batching,
the deadline and the metrics are /serve's, not copies. Without a version in the path, the
``serve_multiplexed_model_id`` header, else the pinned default, chooses it, as for ``/serve``.

The tensors, their datatypes and the binary tensor extension: ``serving.inference_tensors``.
The same protocol over gRPC, on the same path: ``serving.grpc_inference``.

Errors are sigserve's problem fields with the protocol's ``error`` (a string) beside them, typed
``application/json``: tritonclient reads ``error`` from any error body, KServe's client only
from ``application/json``. The statuses are /serve's (404, 409 with ``reasons``, 422 with
``errors``, 503 with Retry-After).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from serving.bodies import read_body
from serving.contract import Contract, contract_for
from serving.exceptions import ProblemError, UnknownRoute
from serving.inference_tensors import (
    HEADER_LENGTH,
    infer_answer,
    metadata,
    parse_request,
    serve_body,
)
from serving.problems import error_code
from serving.resolve import Target, find_model, resolve, table_or_not_ready
from serving.table_source import TableSource
from wire.problems import TYPE_PREFIX
from wire.routing_table import RoutingTable, VersionState

logger = logging.getLogger(__name__)

Respond = Callable[[Target, RoutingTable | None], Awaitable[Response]]
# The API's one path for a request that runs a model (``serving.api``'s ``_answer``).
# An HTTP route gives it its request; a gRPC call its metadata (``serving.grpc_inference``).
Answer = Callable[[str, str | None, Request | Mapping[str, str], Respond], Awaitable[Response]]
# A /serve body validated against the contract and run: the output records.
Run = Callable[[Target, RoutingTable | None, Any], Awaitable[list[Any]]]


def error_response(request: Request, exc: ProblemError) -> JSONResponse:
    """The protocol's error (``error``) with sigserve's problem fields beside it."""
    body = {
        "error": exc.detail,
        "type": TYPE_PREFIX + exc.slug,
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "instance": request.url.path,
        "error_code": error_code(exc.status, exc.slug),
        **exc.extensions,
    }
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse(body, status_code=exc.status, headers=headers)


# Routes


def install(
    app: FastAPI,
    source: TableSource,
    *,
    answer: Answer,
    run: Run,
    max_body_bytes: int | None,
) -> None:
    """Register the protocol's routes on ``app``; ``answer`` and ``run`` are the API's."""

    async def protocol(request: Request, call: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await call()
        except ProblemError as exc:
            return error_response(request, exc)
        except Exception:
            logger.exception("unhandled error on %s %s", request.method, request.url.path)
            return error_response(request, ProblemError("an internal error occurred"))

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return server_info()

    @app.get("/v2/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready(request: Request) -> Response:
        async def call() -> Response:
            table_or_not_ready(source.table)
            return JSONResponse({"ready": True})

        return await protocol(request, call)

    async def model_metadata(request: Request, name: str, version: str | None) -> Response:
        async def call() -> Response:
            return JSONResponse(describe(source.table, name, version))

        return await protocol(request, call)

    async def model_ready(request: Request, name: str, version: str | None) -> Response:
        async def call() -> Response:
            # Servable from the table's view, as MLflow's /ping here: no load for a probe.
            target = resolve(source.table, name, version)
            return JSONResponse({"name": name, "version": target.version.version, "ready": True})

        return await protocol(request, call)

    async def infer(request: Request, name: str, version: str | None) -> Response:
        async def respond(target: Target, table: RoutingTable | None) -> Response:
            raw = await read_body(request, max_body_bytes)
            parsed = parse_request(raw, request.headers.get(HEADER_LENGTH))
            model_contract = contract_of(target)
            records = await run(target, table, serve_body(parsed, model_contract))
            return infer_answer(parsed, records, model_contract, name, target.version.version)

        return await protocol(request, lambda: answer(name, version, request, respond))

    @app.get("/v2/models/{name}")
    async def default_metadata(request: Request, name: str) -> Response:
        return await model_metadata(request, name, None)

    @app.get("/v2/models/{name}/versions/{version}")
    async def version_metadata(request: Request, name: str, version: str) -> Response:
        return await model_metadata(request, name, version)

    @app.get("/v2/models/{name}/ready")
    async def default_ready(request: Request, name: str) -> Response:
        return await model_ready(request, name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def version_ready(request: Request, name: str, version: str) -> Response:
        return await model_ready(request, name, version)

    @app.post("/v2/models/{name}/infer")
    async def default_infer(request: Request, name: str) -> Response:
        return await infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def version_infer(request: Request, name: str, version: str) -> Response:
        return await infer(request, name, version)

    @app.api_route("/v2/{path:path}", methods=["GET", "POST"], include_in_schema=False)
    async def unknown(request: Request, path: str) -> Response:
        # A path the protocol does not have still answers in the protocol's form.
        return error_response(request, UnknownRoute(f"/v2/{path} is not a route of this server"))


def contract_of(target: Target) -> Contract:
    """The model's contract, as /serve validates against it (docs/architecture.md)."""
    return contract_for(target.model.name, target.model.contract or target.version.signature)


def describe(table: RoutingTable | None, name: str, version: str | None) -> dict[str, Any]:
    """A model's metadata (REST's and gRPC's): its live versions, and the tensors of its
    contract, which infer validates against; resolved as /ping, without a load."""
    target = resolve(table, name, version)
    model = find_model(table, name)
    live = [v.version for v in model.versions.values() if v.state == VersionState.LIVE]
    return metadata(name, live, contract_of(target))


def server_info() -> dict[str, Any]:
    return {"name": "sigserve", "version": _version(), "extensions": ["binary_tensor_data"]}


def _version() -> str:
    try:
        return package_version("sigserve")
    except PackageNotFoundError:
        return "unknown"

"""The HTTP API of the serving app: a FastAPI app that validates, resolves and forwards.

It knows nothing of Ray: it gets a ``TableSource`` (the routing table) and a ``ModelBackend``
(something that runs a version on some data), so it runs the same under Ray Serve and in a test
client. Routes:

    GET  /models                                       revision and every model's versions/states
    GET  /models/{name}                                contract, default version, versions/states
    POST /models/{name}/serve                          records in, output records out
    POST /models/{name}/versions/{version}/serve       same, version from the path
         ... with Accept: text/event-stream             predict_stream's chunks as Server-Sent
                                                       Events (``serving.streaming``)
    POST /models/{name}[/versions/{version}]/invocations   MLflow's scoring protocol
    GET  /models/{name}[/versions/{version}]/ping|health   MLflow's probes: 200 when servable
    GET  /models/{name}/version                        MLflow's version, as MLflow answers it
    POST /invocations, GET /ping|/health|/version      the same, for ``default_model`` if set
    GET  /-/healthz                                    liveness
    /v2/...                                            the Open Inference Protocol
    (gRPC) inference.GRPCInferenceService              the same protocol, on Serve's gRPC port

Bodies for ``/serve`` are described in ``serving.contract``, the scoring protocol's in
``serving.scoring_protocol``, the Open Inference Protocol's (its routes too) in
``serving.open_inference``; errors in ``serving.problems``. Every request that runs a model
goes through ``_answer``: one resolve, one re-check after the load, one metric, and for a model
under a rollout its routing, counting and shadow (``serving.rollout_path``); every answer names
the version that produced it in ``sigserve-model-version``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from mlflow.models import ModelSignature

from serving import open_inference, scoring_protocol, streaming
from serving.bodies import check_count, read_body, read_json
from serving.contract import Contract, contract_for
from serving.exceptions import ProblemError
from serving.fast_routes import FastRoutedAPI
from serving.grpc_inference import GrpcInference
from serving.openapi import install_openapi, json_schema
from serving.problems import install_problem_handlers
from serving.recorder import NoRecorder, Recorder
from serving.resolve import (
    Target,
    find_model,
    header_version,
    recheck,
    resolve,
    table_or_not_ready,
)
from serving.rollout_path import VERSION_HEADER, RolloutPath
from serving.rollout_routing import Routed
from serving.table_source import TableSource
from wire.routing_table import ModelEntry, RoutingTable

# What a route does once its version is resolved: the target, and the table it came from.
Respond = Callable[[Target, RoutingTable | None], Awaitable[Response]]


class ModelBackend(Protocol):
    """Runs ``target`` (a live version and the artifact it was checked on)."""

    async def serve(
        self,
        target: Target,
        records: list[Any],
        params: dict[str, Any] | None,
        signature: ModelSignature | None,
        *,
        after_load: Callable[[], None] | None = None,
        rows: Callable[[Any, Any], list[Any]] = ...,
    ) -> list[Any]:
        """Output records for validated ``records``, shaped by the version's ``signature``
        (``rows`` turns a prediction into them, /serve's records by default); ``after_load``
        runs between the model's load and its predict, and may refuse."""
        ...

    async def invoke(
        self,
        target: Target,
        data: Any,
        params: dict[str, Any] | None,
        *,
        after_load: Callable[[], None] | None = None,
    ) -> Any:
        """The raw prediction for ``data`` as MLflow's scoring server parsed it; ``after_load``
        as in ``serve``."""
        ...

    async def stream(
        self,
        target: Target,
        records: list[Any],
        params: dict[str, Any] | None,
        signature: ModelSignature | None,
        *,
        after_load: Callable[[], None] | None = None,
    ) -> streaming.ChunkStream:
        """The chunks of the model's ``predict_stream`` for one validated record (nothing
        pulled yet); ``after_load`` as in ``serve``."""
        ...


def create_app(
    source: TableSource,
    backend: ModelBackend,
    *,
    startup_wait_s: float = 0,
    max_body_bytes: int | None = None,
    max_records: int | None = None,
    recorder: Recorder | None = None,
    default_model: str | None = None,
    rollouts: RolloutPath | None = None,
) -> FastAPI:
    """The app; ``default_model`` also answers MLflow's root routes (``/invocations``,
    ``/ping``...) for that model, as a one-model ``mlflow models serve`` would; ``rollouts``
    routes, counts and shadows the requests of models under a rollout (its own if not given)."""
    metrics = recorder if recorder is not None else NoRecorder()
    rollout = rollouts if rollouts is not None else RolloutPath()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await source.start(wait_s=startup_wait_s)
        await metrics.start()
        await rollout.start()
        yield
        await rollout.stop()
        await metrics.stop()
        await source.stop()

    # FastAPI, with the routes that run a model dispatched without its per-request machinery
    # (``serving.fast_routes``).
    app = FastRoutedAPI(
        title="sigserve",
        description="MLflow registry models, served under APIs derived from their signatures.",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    install_openapi(app, lambda: source.table)

    @app.get("/-/healthz")
    async def healthz() -> dict[str, Any]:
        table = source.table
        return {"status": "ok", "revision": table.revision if table is not None else None}

    @app.get("/models")
    async def list_models() -> dict[str, Any]:
        table = table_or_not_ready(source.table)
        return {"revision": table.revision, "models": [_summary(m) for m in table.models.values()]}

    @app.get("/models/{name}")
    async def describe_model(name: str) -> dict[str, Any]:
        model = find_model(source.table, name)
        return {**_summary(model), "contract": _contract_view(model)}

    @app.post("/models/{name}/serve")
    async def serve_default(name: str, request: Request) -> Response:
        return await _serve(name, None, request)

    @app.post("/models/{name}/versions/{version}/serve")
    async def serve_version(name: str, version: str, request: Request) -> Response:
        return await _serve(name, version, request)

    @app.post("/models/{name}/invocations")
    async def invocations(name: str, request: Request) -> Response:
        return await _invoke(name, None, request)

    @app.post("/models/{name}/versions/{version}/invocations")
    async def version_invocations(name: str, version: str, request: Request) -> Response:
        return await _invoke(name, version, request)

    @app.get("/models/{name}/version")
    async def mlflow_version(name: str) -> Response:
        find_model(source.table, name)
        return scoring_protocol.version()

    if default_model is not None:
        # Routes of their own, fixed when the app is built, as Ray Serve fixes every route.
        model = default_model

        @app.post("/invocations")
        async def root_invocations(request: Request) -> Response:
            return await _invoke(model, None, request)

        @app.get("/ping")
        @app.get("/health")
        async def root_ping(request: Request) -> Response:
            return await _ping_default(model, request)

        @app.get("/version")
        async def root_version() -> Response:
            return await mlflow_version(model)

    async def _serve(name: str, version: str | None, request: Request) -> Response:
        if streaming.wants_stream(request.headers.get("accept")):
            return await _stream(name, version, request)

        async def respond(target: Target, table: RoutingTable | None) -> Response:
            return JSONResponse(await _run(target, table, await read_json(request, max_body_bytes)))

        return await _answer(name, version, request, respond)

    async def _stream(name: str, version: str | None, request: Request) -> Response:
        """/serve's body, gate and contract; the answer is the model's ``predict_stream`` as
        Server-Sent Events, its first chunk pulled before the status is sent."""

        async def respond(target: Target, table: RoutingTable | None) -> Response:
            body = await read_json(request, max_body_bytes)
            check_count(body, max_records)
            contract, version_signature = _signatures(target)
            parsed = contract.parse(body)
            streaming.one_input(body, parsed.records)
            chunks = await backend.stream(
                target,
                parsed.records,
                parsed.params,
                version_signature,
                after_load=still_served(target, table),
            )
            first = await streaming.first_events(chunks)
            return streaming.ChunkEvents(chunks, first, request.url.path)

        return await _answer(name, version, request, respond)

    def _signatures(target: Target) -> tuple[Contract, ModelSignature | None]:
        """The model's contract (docs/architecture.md, "The contract"), which shapes what
        clients send, and the chosen version's own signature, which shapes what its model reads
        and writes."""
        name = target.model.name
        contract = contract_for(name, target.model.contract or target.version.signature)
        version_signature = (
            contract_for(name, target.version.signature).signature or contract.signature
        )
        return contract, version_signature

    async def _run(target: Target, table: RoutingTable | None, body: Any) -> list[Any]:
        """Output records for a body in /serve's shapes: validated and batched as /serve's."""
        contract, version_signature = _signatures(target)
        check_count(body, max_records)
        parsed = contract.parse(body)
        return await backend.serve(
            target,
            parsed.records,
            parsed.params,
            version_signature,
            after_load=still_served(target, table),
        )

    async def _invoke(name: str, version: str | None, request: Request) -> Response:
        async def respond(target: Target, table: RoutingTable | None) -> Response:
            # MLflow's server reads a request with the artifact's own signature: so does this.
            signature = contract_for(name, target.version.signature).signature
            raw = await read_body(request, max_body_bytes)
            typed = scoring_protocol.typed_inputs(target.version.signature)
            scoring = scoring_protocol.parse(
                raw, request.headers.get("content-type"), signature, max_records, typed=typed
            )
            if scoring.records is not None:
                # Records MLflow's parser would make a plain frame of: batched as /serve's are.
                rows = await backend.serve(
                    target,
                    scoring.records,
                    scoring.params,
                    signature,
                    after_load=still_served(target, table),
                    rows=scoring_protocol.answer_rows,
                )
                return JSONResponse(scoring_protocol.rows_answer(rows))
            prediction = await backend.invoke(
                target, scoring.data, scoring.params, after_load=still_served(target, table)
            )
            return JSONResponse(scoring_protocol.answer(prediction, scoring.unwrapped))

        return await _answer(name, version, request, respond)

    async def _answer(
        name: str, version: str | None, request: Request | Mapping[str, str], respond: Respond
    ) -> Response:
        """Resolve the version (path, else header, else a rollout's choice or the default)
        before reading the body, so a quarantined version answers 409 whatever is sent; then
        ``respond``, timed and counted here, not in a middleware: one call on the request path.
        The answer names the version that produced it (``VERSION_HEADER``), a problem too
        once its version was chosen. A gRPC call (``serving.grpc_inference``) gives its
        metadata for ``request``, and is not shadowed (a shadow replays an HTTP body)."""
        started = time.perf_counter()
        routed: Routed | None = None
        target: Target | None = None
        headers = request.headers if isinstance(request, Request) else request
        try:
            if version is None:
                version = ""  # labels no version if the header names another model (400)
                version = header_version(name, headers)
            table = source.table
            if version is None and (routed := rollout.route(table, name, headers)):
                version = routed.version
            target = resolve(table, name, version)
            if isinstance(request, Request):
                shadowed = await rollout.keep_for_shadow(routed, request, max_body_bytes)
            else:
                shadowed = False
                if routed is None:
                    rollout.shadows.client_seen()  # a client's: shadows give way to it too
            response = await respond(target, table)
        except BaseException as exc:
            if target is not None and isinstance(exc, ProblemError):
                # Refused or failed once its version was chosen: the problem names it too.
                # One raised by an older replica's code, across Ray, may lack the attribute.
                if getattr(exc, "headers", None) is None:
                    exc.headers = {}
                exc.headers[VERSION_HEADER] = target.version.version
            _failed(name, version, exc, started, routed)
            raise
        served = target.version.version
        response.headers[VERSION_HEADER] = served
        if isinstance(response, streaming.ChunkEvents):
            # Counted when its last event is sent, with how it ended.
            def ended(status: int) -> None:
                seconds = time.perf_counter() - started
                metrics.request(name, served, status, seconds)
                rollout.answered(name, routed, status, seconds)

            response.on_end = ended
            return response
        seconds = time.perf_counter() - started
        metrics.request(name, served, 200, seconds)
        if routed is not None:
            rollout.answered(name, routed, 200, seconds)
            if shadowed and isinstance(request, Request):
                candidate = routed.rollout.candidate
                rollout.shadow(
                    response, name, routed, request,
                    lambda: respond(resolve(source.table, name, candidate), source.table),
                )  # fmt: skip
        return response

    async def _ping_default(name: str, request: Request) -> Response:
        resolve(source.table, name, header_version(name, request.headers))
        return scoring_protocol.ping()

    async def _ping_version(name: str, version: str) -> Response:
        # Servable from the table's view: live and bound to a checked artifact. The model is
        # not loaded for a probe (a load failure answers the first request, with its cause).
        resolve(source.table, name, version)
        return scoring_protocol.ping()

    for probe in ("ping", "health"):
        app.get(f"/models/{{name}}/{probe}")(_ping_default)
        app.get(f"/models/{{name}}/versions/{{version}}/{probe}")(_ping_version)

    def still_served(target: Target, resolved_from: RoutingTable | None) -> Callable[[], None]:
        """Run by the backend once ``target`` is loaded: make sure the table held then still
        serves it, so a version quarantined or removed while its model loaded (seconds, for a
        download) answers what the table now says and is never predicted. The backend looks
        the model up once for both (``resolve.recheck`` says why the re-check)."""

        def check() -> None:
            table = source.table
            if table is not resolved_from:  # the same table: nothing to look up
                recheck(table, target)

        return check

    def _failed(
        name: str, version: str | None, exc: BaseException, started: float, routed: Routed | None
    ) -> None:
        """Record a request that raised (the problem handlers answer it)."""
        if isinstance(exc, ProblemError):
            status = exc.status
        elif isinstance(exc, asyncio.CancelledError):
            status = 499  # the client went away (nginx's code for it)
        else:
            status = 500
        model, named = _labels(source.table, name, version)
        seconds = time.perf_counter() - started
        metrics.request(model, named, status, seconds)
        rollout.answered(name, routed, status, seconds)

    open_inference.install(app, source, answer=_answer, run=_run, max_body_bytes=max_body_bytes)
    # The same protocol over gRPC, on this app's path; Ray Serve's gRPC methods on the
    # deployment (``serving.server``) hand their calls to it.
    app.state.grpc_inference = GrpcInference(
        source, answer=_answer, run=_run, max_body_bytes=max_body_bytes
    )
    return app


def _labels(table: RoutingTable | None, name: str, version: str | None) -> tuple[str, str]:
    """Metric labels: the model and version as the table knows them, else "" (a client may
    send any name, and a label per unknown name would grow without bound)."""
    model = table.models.get(name) if table is not None else None
    if model is None:
        return "", ""
    chosen = version if version is not None else model.default_version
    return name, chosen if chosen is not None and chosen in model.versions else ""


def _summary(model: ModelEntry) -> dict[str, Any]:
    return {
        "name": model.name,
        "default_version": model.default_version,
        "versions": [
            {
                "version": v.version,
                "state": v.state.value,
                "reasons": list(v.reasons),
                "warnings": list(v.warnings),
            }
            for v in model.versions.values()
        ],
    }


def _contract_view(model: ModelEntry) -> dict[str, Any] | None:
    if model.contract is None:
        return None
    contract = contract_for(model.name, model.contract)
    view: dict[str, Any] = {
        key: json.loads(value) if value else None for key, value in model.contract.items()
    }
    view["record_schema"] = json_schema(contract.record)
    view["output_schema"] = json_schema(contract.output)
    view["params_schema"] = json_schema(contract.params) if contract.params else None
    return view

"""The HTTP API of the serving app: a FastAPI app that validates, resolves and forwards.

It knows nothing of Ray: it gets a ``TableSource`` (the routing table) and a ``ModelBackend``
(something that runs a version on some data), so it runs the same under Ray Serve and in a test
client. Routes:

    GET  /models                                     revision and every model's versions/states
    GET  /models/{name}                              contract, default version, versions/states
    POST /models/{name}/serve                        records in, output records out
    POST /models/{name}/versions/{version}/serve     same, version from the path
    POST /models/{name}/invocations                  MLflow scoring-server protocol
    GET  /-/healthz                                  liveness

Bodies for ``/serve`` are described in ``serving.contract``; errors in ``serving.problems``.
``/invocations`` takes what ``mlflow models serve`` takes (``dataframe_split``,
``dataframe_records``, ``instances`` or ``inputs``, with optional ``params``) and answers
``{"predictions": [...]}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc.scoring_server import infer_and_parse_data

from serving.contract import contract_for
from serving.exceptions import BodyTooLarge, InvalidInput, ProblemError
from serving.frames import jsonable
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
from serving.table_source import TableSource
from wire.routing_table import ModelEntry, RoutingTable

_SCORING_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


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
    ) -> list[Any]:
        """Output records for validated ``records``, shaped by the version's ``signature``;
        ``after_load`` runs between the model's load and its predict, and may refuse."""
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


def create_app(
    source: TableSource,
    backend: ModelBackend,
    *,
    startup_wait_s: float = 0,
    max_body_bytes: int | None = None,
    max_records: int | None = None,
    recorder: Recorder | None = None,
) -> FastAPI:
    metrics = recorder if recorder is not None else NoRecorder()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await source.start(wait_s=startup_wait_s)
        await metrics.start()
        yield
        await metrics.stop()
        await source.stop()

    app = FastAPI(
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
    async def serve_default(name: str, request: Request) -> JSONResponse:
        return await _serve(name, None, request)

    @app.post("/models/{name}/versions/{version}/serve")
    async def serve_version(name: str, version: str, request: Request) -> JSONResponse:
        return await _serve(name, version, request)

    @app.post("/models/{name}/invocations")
    async def invocations(name: str, request: Request) -> JSONResponse:
        started = time.perf_counter()
        version: str | None = ""  # labels no version if the header names another model (400)
        try:
            version = header_version(name, request.headers)
            # Resolve before reading the body: a quarantined version answers 409 whatever is
            # sent.
            table = source.table
            target = resolve(table, name, version)
            signature = contract_for(name, target.version.signature).signature
            body = await _json(request, max_body_bytes)
            if not isinstance(body, dict):
                raise _bad_body("must be a JSON object with one of " + ", ".join(_SCORING_FORMATS))
            _check_count(body, max_records)
            data = {k: v for k, v in body.items() if k in _SCORING_FORMATS}
            unknown = sorted(set(body) - set(_SCORING_FORMATS) - {"params"})
            if unknown or len(data) != 1:
                raise _bad_body(
                    f"needs exactly one of {', '.join(_SCORING_FORMATS)} (and 'params')"
                )
            schema: Any = signature.inputs if signature is not None else None
            try:
                parsed = infer_and_parse_data(data, schema)
            except MlflowException as exc:
                raise _bad_body(exc.message) from None
            prediction = await backend.invoke(
                target, parsed, body.get("params"), after_load=still_served(target, table)
            )
            response = JSONResponse({"predictions": jsonable(_scoring_output(prediction))})
        except BaseException as exc:
            _failed(name, version, exc, started)
            raise
        metrics.request(name, target.version.version, 200, time.perf_counter() - started)
        return response

    async def _serve(name: str, version: str | None, request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            if version is None:
                version = ""  # labels no version if the header names another model (400)
                version = header_version(name, request.headers)
            table = source.table
            target = resolve(table, name, version)
            # The model's contract (docs/architecture.md, "The contract") shapes what clients
            # send; the chosen version's own signature shapes what its model reads and writes.
            contract = contract_for(name, target.model.contract or target.version.signature)
            version_signature = (
                contract_for(name, target.version.signature).signature or contract.signature
            )
            body = await _json(request, max_body_bytes)
            _check_count(body, max_records)
            parsed = contract.parse(body)
            served = await backend.serve(
                target,
                parsed.records,
                parsed.params,
                version_signature,
                after_load=still_served(target, table),
            )
            response = JSONResponse(served)
        except BaseException as exc:
            _failed(name, version, exc, started)
            raise
        # Timed and counted here, not in a middleware: one call on the request path.
        metrics.request(name, target.version.version, 200, time.perf_counter() - started)
        return response

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

    def _failed(name: str, version: str | None, exc: BaseException, started: float) -> None:
        """Record a request that raised (the problem handlers answer it)."""
        if isinstance(exc, ProblemError):
            status = exc.status
        elif isinstance(exc, asyncio.CancelledError):
            status = 499  # the client went away (nginx's code for it)
        else:
            status = 500
        model, named = _labels(source.table, name, version)
        metrics.request(model, named, status, time.perf_counter() - started)

    return app


def _labels(table: RoutingTable | None, name: str, version: str | None) -> tuple[str, str]:
    """Metric labels: the model and version as the table knows them, else "" (a client may
    send any name, and a label per unknown name would grow without bound)."""
    model = table.models.get(name) if table is not None else None
    if model is None:
        return "", ""
    chosen = version if version is not None else model.default_version
    return name, chosen if chosen is not None and chosen in model.versions else ""


async def _json(request: Request, max_bytes: int | None) -> Any:
    try:
        return json.loads(await _body(request, max_bytes))
    except RecursionError:
        raise _bad_body("is nested too deeply to be read") from None
    except ValueError as exc:
        raise _bad_body(f"is not valid JSON: {exc}") from None


async def _body(request: Request, max_bytes: int | None) -> bytes:
    """The body, refused (413) as soon as it is known to be too large: from its Content-Length
    before reading any of it, else while it streams in, never held whole in memory."""
    if max_bytes is None:
        return await request.body()
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, max_bytes: int) -> BodyTooLarge:
    reason = f"has {size} bytes or more; a request may send at most {max_bytes}"
    return BodyTooLarge(f"body {reason}", errors=[{"field": "body", "reason": reason}])


def _check_count(body: Any, max_records: int | None) -> None:
    """Refuse a body of more records than a request may hold, before validating any of them."""
    if max_records is None:
        return
    field, count = _records_in(body)
    if count > max_records:
        reason = f"holds {count} records; a request may hold at most {max_records}"
        raise InvalidInput(f"{field} {reason}", errors=[{"field": field, "reason": reason}])


def _records_in(body: Any) -> tuple[str, int]:
    """Where a body's records are and how many: a list, an envelope, or a scoring format."""
    if isinstance(body, list):
        return "body", len(body)
    if not isinstance(body, dict):
        return "body", 1
    for key in ("inputs", "dataframe_records", "instances"):
        value = body.get(key)
        if isinstance(value, list):
            return key, len(value)
        if isinstance(value, dict):  # columns of values
            lengths = [len(v) for v in value.values() if isinstance(v, list)]
            return key, max(lengths, default=1)
    split = body.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        return "dataframe_split.data", len(split["data"])
    return "body", 1


def _bad_body(reason: str) -> InvalidInput:
    return InvalidInput(f"body {reason}", errors=[{"field": "body", "reason": reason}])


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


def _scoring_output(prediction: Any) -> Any:
    # What `mlflow models serve` answers: frames as records, arrays as nested lists.
    if isinstance(prediction, pd.DataFrame):
        return prediction.to_dict(orient="records")
    if isinstance(prediction, pd.Series):
        return prediction.tolist()
    return prediction

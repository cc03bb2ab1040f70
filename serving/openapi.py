"""The OpenAPI document, with one concrete path per served model.

FastAPI's routes are fixed when a replica starts, so the real routes take the model name as a
path parameter and their generated schema says nothing about any model. ``/openapi.json`` (and
``/docs``, which reads it) is therefore rebuilt from the routing table: for every model with a
contract it gains ``POST /models/{that name}/serve`` with the request schema (one record, a
list, or the params envelope) and the response schema (a list of output records, or, asked with
``Accept: text/event-stream``, the model's ``predict_stream`` chunks: ``serving.streaming``).
The document is cached per table revision.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import ConfigDict, TypeAdapter, create_model

from serving.contract import Contract, contract_for, list_of
from serving.streaming import EVENT_STREAM
from wire.problems import MEDIA_TYPE as PROBLEM_MEDIA_TYPE
from wire.routing_table import ModelEntry, RoutingTable

_REF = "#/components/schemas/{model}"
_PROBLEM = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        # MLflow's code for the same failure (serving.problems).
        "error_code": {"type": "string"},
    },
    "required": ["type", "title", "status"],
}
# Server-Sent Events, asked with Accept: text/event-stream (serving.streaming).
_STREAM = {
    "type": "string",
    "description": (
        "With `Accept: text/event-stream`, one record in: a `data:` event per chunk of the "
        "model's predict_stream (JSON), then `data: [DONE]`; a failure after the first chunk "
        "is an `event: error` whose data is the problem+json, the status being already 200"
    ),
}
_ERRORS = {
    "404": "Unknown model or version",
    "406": "A stream was asked for and the version's model has no predict_stream",
    "409": "The version is quarantined (see `reasons`)",
    "422": "The body does not fit the contract (see `errors`)",
    "503": "Not ready: no table, no default, or version pending (see Retry-After)",
}


def request_type(contract: Contract) -> Any:
    """The type hint of a whole request body for ``contract``."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", contract.name)
    record = contract.record
    inputs = record if contract.kind == "tensor" else record | list_of(record)
    fields: dict[str, Any] = {"inputs": (inputs, ...)}
    if contract.params is not None:
        fields["params"] = (contract.params | None, None)
    envelope = create_model(f"{stem}_Envelope", __config__=ConfigDict(extra="forbid"), **fields)
    if contract.kind == "tensor":
        return envelope
    return record | list_of(record) | envelope


def json_schema(hint: Any, components: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON schema of ``hint``; nested models go to ``components`` when given, else inline."""
    if components is None:
        return TypeAdapter(hint).json_schema()
    schema = TypeAdapter(hint).json_schema(ref_template=_REF)
    components.update(schema.pop("$defs", {}))
    return schema


def install_openapi(app: FastAPI, current_table: Callable[[], RoutingTable | None]) -> None:
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        table = current_table()
        revision = table.revision if table is not None else None
        if cached.get("revision", -1) != revision:
            cached["schema"] = _document(app, table)
            cached["revision"] = revision
        document: dict[str, Any] = cached["schema"]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _document(app: FastAPI, table: RoutingTable | None) -> dict[str, Any]:
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = _PROBLEM
    for model in table.models.values() if table is not None else []:
        if model.contract is not None:
            path = f"/models/{quote(model.name, safe='')}/serve"
            document["paths"][path] = {"post": _operation(model, components)}
    return document


def _operation(model: ModelEntry, components: dict[str, Any]) -> dict[str, Any]:
    contract = contract_for(model.name, model.contract)
    problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    responses: dict[str, Any] = {
        "200": {
            "description": "One output record per input record",
            "content": {
                "application/json": {"schema": json_schema(list_of(contract.output), components)},
                EVENT_STREAM: {"schema": _STREAM},
            },
        },
    }
    responses.update({code: {"description": d, "content": problem} for code, d in _ERRORS.items()})
    return {
        "summary": f"Call {model.name} (default version {model.default_version})",
        "operationId": f"serve_{re.sub(r'[^A-Za-z0-9_]', '_', model.name)}",
        "tags": [model.name],
        "parameters": [
            {
                "name": "serve_multiplexed_model_id",
                "in": "header",
                "required": False,
                "description": 'Version to call ("2" or "name/2"); the default otherwise',
                "schema": {"type": "string"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema(request_type(contract), components)}
            },
        },
        "responses": responses,
    }

"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), on the same path.

Ray Serve's gRPC listener calls the deployment's method named after the RPC with its message
(``serving.server``); each hands it to this class, made per replica beside the HTTP app by
``serving.api.create_app`` with that app's own ``_answer`` and ``_run``. So ``ModelInfer``
takes /serve's path as REST's ``/v2/.../infer`` does (docs/architecture.md, "The Open
Inference Protocol"): the gate, the version choice, the contract's validation, the
multiplexing, the batching with /serve's requests, the deadline and the request metric are the
same code. ``model_name`` names the model, ``model_version`` the version (else the
``serve_multiplexed_model_id`` metadata, else a rollout's choice or the default, as for
/serve). The tensors: ``serving.grpc_tensors``.

A problem is answered as a gRPC status (``STATUS_CODES``) with the problem's detail as its
message (a 409's reasons and a 422's field and reason are in it) and, as trailing metadata, the
problem's type (``sigserve-problem-type``), ``retry-after`` for a 503 and the version that was
chosen (``sigserve-model-version``, also on every answer), never as an exception out of the
method: Ray Serve would log each 404 with a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from fastapi import Request
from fastapi.responses import Response
from google.protobuf.message import Message

from serving.exceptions import BodyTooLarge, InvalidInput, ProblemError
from serving.grpc_protocol.grpc_predict_v2_pb2 import (
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataRequest,
    ModelMetadataResponse,
    ModelReadyRequest,
    ModelReadyResponse,
    ServerLiveRequest,
    ServerLiveResponse,
    ServerMetadataRequest,
    ServerMetadataResponse,
    ServerReadyRequest,
    ServerReadyResponse,
)
from serving.grpc_tensors import infer_request, infer_response
from serving.inference_tensors import serve_body
from serving.open_inference import contract_of, describe, server_info
from serving.resolve import Target, resolve
from serving.rollout_path import VERSION_HEADER
from serving.table_source import TableSource
from wire.problems import TYPE_PREFIX
from wire.routing_table import RoutingTable

logger = logging.getLogger(__name__)

# A problem's HTTP status as the gRPC status a client of the protocol switches on.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

Reply = TypeVar("Reply", bound=Message)
Respond = Callable[[Target, RoutingTable | None], Awaitable[Response]]
# The API's path for a request that runs a model (``serving.api``'s ``_answer``), given the
# call's metadata where an HTTP route gives its request.
Answer = Callable[[str, str | None, "Request | Mapping[str, str]", Respond], Awaitable[Response]]
Run = Callable[[Target, RoutingTable | None, Any], Awaitable[list[Any]]]


class Context(Protocol):
    """What is used of the call's context (Ray Serve's ``RayServegRPCContext``)."""

    def invocation_metadata(self) -> Sequence[tuple[str, str]]: ...

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...

    def set_trailing_metadata(self, trailing_metadata: list[tuple[str, str]]) -> None: ...


class ProtoAnswer(Response):
    """A gRPC answer on the API's path: ``_answer`` times, counts and labels it as any other."""

    def __init__(self, message: Message) -> None:
        super().__init__()
        self.message = message


def status_of(exc: ProblemError) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message for a problem; a 422's errors are named in the message."""
    code = STATUS_CODES.get(exc.status)
    if code is None:
        code = grpc.StatusCode.FAILED_PRECONDITION if exc.status < 500 else grpc.StatusCode.INTERNAL
    message = exc.detail
    errors = exc.extensions.get("errors") if isinstance(exc, InvalidInput) else None
    if isinstance(errors, list):
        named = [
            f"{e.get('field')}: {e.get('reason')}"
            for e in errors
            if isinstance(e, dict) and str(e.get("field")) not in message
        ]
        if named:
            message = f"{message} ({'; '.join(named)})"
    return code, message


def problem_metadata(exc: ProblemError) -> list[tuple[str, str]]:
    metadata = [("sigserve-problem-type", TYPE_PREFIX + exc.slug)]
    if exc.retry_after is not None:
        metadata.append(("retry-after", str(exc.retry_after)))
    version = (getattr(exc, "headers", None) or {}).get(VERSION_HEADER)
    if version is not None:
        metadata.append((VERSION_HEADER, version))
    return metadata


class GrpcInference:
    """The six RPCs; each takes the message and the call's context and returns the reply."""

    def __init__(
        self, source: TableSource, *, answer: Answer, run: Run, max_body_bytes: int | None = None
    ) -> None:
        self._source = source
        self._answer = answer
        self._run = run
        self._max_bytes = max_body_bytes

    async def server_live(self, _: ServerLiveRequest, context: Context) -> ServerLiveResponse:
        return ServerLiveResponse(live=True)

    async def server_ready(self, _: ServerReadyRequest, context: Context) -> ServerReadyResponse:
        return ServerReadyResponse(ready=self._source.table is not None)

    async def server_metadata(
        self, _: ServerMetadataRequest, context: Context
    ) -> ServerMetadataResponse:
        return ServerMetadataResponse(**server_info())

    async def model_ready(self, request: ModelReadyRequest, context: Context) -> ModelReadyResponse:
        async def call() -> ModelReadyResponse:
            # Servable from the table's view, as REST's ready: no load for a probe. A model the
            # table does not have is NOT_FOUND; a version quarantined or pending is not ready.
            try:
                resolve(self._source.table, request.name, request.version or None)
            except ProblemError as exc:
                if exc.status == 404:
                    raise
                return ModelReadyResponse(ready=False)
            return ModelReadyResponse(ready=True)

        return await self._protocol(context, ModelReadyResponse, call)

    async def model_metadata(
        self, request: ModelMetadataRequest, context: Context
    ) -> ModelMetadataResponse:
        async def call() -> ModelMetadataResponse:
            found = describe(self._source.table, request.name, request.version or None)
            return ModelMetadataResponse(**found)

        return await self._protocol(context, ModelMetadataResponse, call)

    async def model_infer(self, request: ModelInferRequest, context: Context) -> ModelInferResponse:
        name = request.model_name
        raw = len(request.raw_input_contents) > 0

        async def respond(target: Target, table: RoutingTable | None) -> Response:
            # SIGSERVE_MAX_BODY_MB, as for HTTP; gRPC has read the message by now (Ray Serve
            # lets its servers take up to RAY_SERVE_GRPC_MAX_MESSAGE_SIZE, 2 GiB by default),
            # but it goes no further: not parsed into tensors, never batched.
            if self._max_bytes is not None and (size := request.ByteSize()) > self._max_bytes:
                reason = f"has {size} bytes; a request may send at most {self._max_bytes}"
                raise BodyTooLarge(f"body {reason}", errors=[{"field": "body", "reason": reason}])
            parsed = infer_request(request)
            contract = contract_of(target)
            records = await self._run(target, table, serve_body(parsed, contract))
            version = target.version.version
            return ProtoAnswer(infer_response(parsed, records, contract, name, version, raw=raw))

        async def call() -> ModelInferResponse:
            if not name:
                raise InvalidInput(
                    "model_name is required", errors=[{"field": "model_name", "reason": "empty"}]
                )
            metadata = dict(context.invocation_metadata())
            answered = await self._answer(name, request.model_version or None, metadata, respond)
            version = answered.headers.get(VERSION_HEADER)
            if version is not None:
                context.set_trailing_metadata([(VERSION_HEADER, version)])
            assert isinstance(answered, ProtoAnswer)
            message = answered.message
            assert isinstance(message, ModelInferResponse)
            return message

        return await self._protocol(context, ModelInferResponse, call)

    async def _protocol(
        self, context: Context, reply: type[Reply], call: Callable[[], Awaitable[Reply]]
    ) -> Reply:
        """``call``'s reply, or its problem as the call's status and an empty reply."""
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except ProblemError as exc:
            problem = exc
        except Exception:
            logger.exception("unhandled error on a gRPC call")
            problem = ProblemError("an internal error occurred")
        code, message = status_of(problem)
        context.set_code(code)
        context.set_details(message)
        context.set_trailing_metadata(problem_metadata(problem))
        empty: Reply = reply()
        return empty

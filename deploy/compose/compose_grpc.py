"""The Open Inference Protocol over gRPC from the host, against the stack's published gRPC port
(ray-head's 8001, HAProxy's gRPC frontend with the fast path): ``ModelInfer`` with grpcio and
the generated stubs in ``serving/grpc_protocol`` (what any V2 gRPC client sends), answering the
numbers ``/serve`` answers for the same records, and a quarantined version's refusal as the
protocol's status with ``/serve``'s reasons. The port is published like HTTP's (on
``SIGSERVE_BIND`` only); who else reaches it is ``compose_isolation``'s check."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
from compose_docker import run
from compose_output import CheckFailed, expect, ok
from compose_scenario import EMBEDDINGS, MODEL, predict
from compose_stack import Stack

from serving.grpc_protocol import grpc_predict_v2_pb2 as pb
from serving.grpc_protocol import grpc_predict_v2_pb2_grpc as pb_grpc

# The port Serve's proxies serve gRPC on inside the containers (docker-compose.yml, `serve`).
CONTAINER_PORT = 8001
TEXTS = ["a cat sits on the mat", "the weather is nice today"]
# MiniLM's float32 vectors, batched with other requests or not: the same to well below this.
TOLERANCE = 1e-5


def _stub(stack: Stack) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.ports['grpc']}")
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def _wait_live(stub: Any, timeout_s: float) -> float:
    """Seconds until ``ServerLive`` answers (HAProxy takes a replica's gRPC server into its
    backend once a health check passed)."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout_s:
        try:
            if stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live:
                return time.monotonic() - started
        except grpc.RpcError as exc:
            last = f"{exc.code()}: {exc.details()}"
        time.sleep(0.5)
    raise CheckFailed(f"gRPC ServerLive did not answer within {timeout_s:.0f} s ({last})")


def _texts_request(model: str, name: str, texts: list[str], version: str = "") -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=name,
        datatype="BYTES",
        shape=[len(texts)],
        contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in texts]),
    )
    return pb.ModelInferRequest(model_name=model, model_version=version, inputs=[tensor])


def published(stack: Stack) -> list[str]:
    """ray-head's published ports, as ``docker inspect`` has them: "container/tcp -> ip:port"."""
    cid = stack.containers()["ray-head"]
    info = json.loads(run(["docker", "inspect", cid]).stdout)[0]
    bound = info["NetworkSettings"]["Ports"] or {}
    return sorted(
        f"{port} -> {b['HostIp']}:{b['HostPort']}" for port, bindings in bound.items()
        for b in bindings or []
    )


def grpc_from_host(stack: Stack) -> None:
    ports = published(stack)
    expected = [
        f"8000/tcp -> 127.0.0.1:{stack.ports['serving']}",
        f"{CONTAINER_PORT}/tcp -> 127.0.0.1:{stack.ports['grpc']}",
    ]
    expect(ports == expected, f"ray-head publishes {ports}, not {expected}")
    ok(f"ray-head publishes HTTP and gRPC on the host's loopback only: {', '.join(ports)}")

    channel, stub = _stub(stack)
    with channel:
        live_s = _wait_live(stub, 60)
        stack.figures["grpc_live_s"] = live_s

        response, call = stub.ModelInfer.with_call(
            _texts_request(EMBEDDINGS, "text", TEXTS), timeout=60
        )
        [output] = response.outputs
        vectors = list(output.contents.fp64_contents)
        width = int(output.shape[1]) if len(output.shape) == 2 else 0
        expect(
            output.name == "embedding" and output.datatype == "FP64"
            and list(output.shape) == [len(TEXTS), width] and len(vectors) == len(TEXTS) * width,
            f"gRPC {EMBEDDINGS}: output {output.name} {output.datatype} {list(output.shape)}, "
            f"{len(vectors)} values",
        )  # fmt: skip
        r = predict(stack, [{"text": t} for t in TEXTS], model=EMBEDDINGS)
        expect(r.status_code == 200, f"/serve {EMBEDDINGS}: {r.status_code} {r.text[:300]}")
        served = [x for row in r.json() for x in row["embedding"]]
        diff = max(abs(a - b) for a, b in zip(vectors, served, strict=True))
        expect(diff <= TOLERANCE, f"gRPC and /serve differ by {diff:g} for {EMBEDDINGS}")
        version = dict(call.trailing_metadata() or ()).get("sigserve-model-version")
        ok(
            f"gRPC ModelInfer {EMBEDDINGS} (2 texts, ServerLive after {live_s:.1f} s): "
            f"{len(TEXTS)}x{width} FP64, the numbers /serve answers (max |diff| {diff:.1e}), "
            f"answered by v{version}"
        )

        r = predict(stack, {"prompt": "Hello"}, version="3")
        reasons = r.json().get("reasons") or []
        expect(r.status_code == 409 and bool(reasons), f"/serve v3: {r.status_code} {r.text}")
        try:
            stub.ModelInfer(_texts_request(MODEL, "prompt", ["Hello"], version="3"), timeout=60)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            trailing = dict(exc.trailing_metadata() or ())
        else:
            raise CheckFailed(f"gRPC ModelInfer of {MODEL} v3 (quarantined) answered")
        expect(
            code == grpc.StatusCode.FAILED_PRECONDITION and str(reasons[0]) in details,
            f"gRPC {MODEL} v3: {code} {details!r}, not FAILED_PRECONDITION naming {reasons[0]!r}",
        )
        ready = stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="3"), timeout=10).ready
        expect(not ready, f"gRPC ModelReady of {MODEL} v3 (quarantined): {ready}")
        ok(
            f"gRPC {MODEL} v3 (quarantined): FAILED_PRECONDITION with /serve's reasons "
            f"({trailing.get('sigserve-problem-type', '?')}); ModelReady false"
        )

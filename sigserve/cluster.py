"""``sigserve serve``: deploy the serving app onto a Ray cluster that is already running.

The driver connects (``ray://host:10001``, ``host:6379`` or ``auto``; never a new local Ray),
starts Serve's HTTP ingress if the cluster has none, deploys the app, waits until it answers and
disconnects. The app stays: Serve's controller is a detached actor, so the app outlives the
driver, as ``serve deploy`` and KubeRay's ``RayService`` leave it.

What the cluster brings itself, because it is fixed when its processes start:
- the fast path (HAProxy direct ingress, ``RAY_SERVE_THROUGHPUT_OPTIMIZED``): environment
  variables of ``ray start`` on every node (``sigserve.stack.fast_path_env`` lists them). The
  deploy is the same with or without them;
- sigserve itself, installed on every node (the same image or venv): replicas import
  ``serving`` from the node's Python, nothing is shipped with the deployment;
- Ray's token authentication, when the cluster has it (Ray 2.60's ``ray start --head`` turns
  it on when ``RAY_AUTH_MODE=token`` is set or a token exists in ``~/.ray/auth_token``): every
  other node and this driver need the same token (``RAY_AUTH_MODE=token`` with
  ``RAY_AUTH_TOKEN``, or the file).

Settings of the app come from ``SIGSERVE_*`` (``serving.settings.ServingSettings``); MLflow's and
Hugging Face's variables of this process are forwarded to the replicas (``serving.app``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# Serve's own names for where its HTTP ingress runs.
PROXY_LOCATIONS = ("EveryNode", "HeadOnly", "Disabled")


class ClusterError(RuntimeError):
    """What went wrong, in words for the person who ran ``sigserve serve``."""


@dataclass(frozen=True)
class Replica:
    replica_id: str
    state: str
    node_id: str | None
    node_ip: str | None


@dataclass(frozen=True)
class Deployed:
    app_name: str
    address: str
    url: str
    status: str
    seconds: float
    replicas: list[Replica] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    grpc: str | None = None

    def describe(self) -> str:
        lines = [
            f"sigserve app {self.app_name!r} is {self.status} on the Ray cluster at {self.address}"
            f" (deployed in {self.seconds:.1f} s)",
            f"  serving   {self.url}   (models: {self.url}/models, OpenAPI: {self.url}/docs)",
        ]
        if self.grpc:
            lines.append(f"  gRPC      {self.grpc}   (Open Inference Protocol)")
        for r in self.replicas:
            lines.append(f"  replica   {r.replica_id} {r.state} on node {r.node_ip} ({r.node_id})")
        lines += [f"  note      {n}" for n in self.notes]
        lines.append("It keeps running after this command exits; redeploy with the same command.")
        return "\n".join(lines)


def resolve_address(given: str | None) -> str:
    """The cluster to join: ``--address``, else ``RAY_ADDRESS``; never "start one"."""
    address = given or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ClusterError(
            "no Ray cluster given: pass --address (ray://HEAD:10001, HEAD:6379 or auto) or set "
            "RAY_ADDRESS; `sigserve up` runs a local stack instead"
        )
    if address == "local":
        raise ClusterError("--address local would start a new Ray; `sigserve up` does that")
    if address == "auto":
        return _recorded_address()
    return address


def _recorded_address() -> str:
    """``auto``: the cluster that ``ray start`` last started on this machine, as Ray records it.

    Ray itself, finding no record, falls back to any GCS process it sees running, which on a
    shared machine may be somebody else's local Ray; a deploy must not land there.
    """
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    try:
        recorded = path.read_text().strip()
    except OSError:
        recorded = ""
    if not recorded:
        raise ClusterError(
            f"--address auto: no cluster started by `ray start` on this machine ({path} is "
            "missing); give the head's address"
        )
    return recorded


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast when nothing listens at ``host:port``: Ray would retry for minutes.

    ``auto`` is left to Ray, which finds the local cluster's address in its temp dir and fails
    at once when there is none.
    """
    target = address.removeprefix("ray://")
    if address == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise ClusterError(f"no running Ray cluster at {address}: {exc}") from exc


def _is_local(ip: str) -> bool:
    """Whether ``ip`` is an address of this machine (binding to it succeeds only then)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def _head_ip() -> str | None:
    import ray

    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return str(node["NodeManagerAddress"])
    return None


def _urls(http_host: str, port: int) -> tuple[str, str]:
    """Where users reach the app, and where this process checks it.

    A wildcard host serves on the head's address (and every node's, with ``EveryNode``). From
    the head node itself (``--address auto`` in a head container) the check goes over loopback,
    which also works where the head's address is not routable back to itself.
    """
    host = http_host
    if http_host in ("0.0.0.0", "::", ""):
        host = _head_ip() or "127.0.0.1"
    public = f"http://{host}:{port}"
    check = f"http://127.0.0.1:{port}" if host != "127.0.0.1" and _is_local(host) else public
    return public, check


def _serve_details() -> Any:
    """Serve's own account of its apps, replicas and nodes (what its dashboard REST API shows).

    Ray has no public call for it from a driver (``serve.status()`` drops the nodes); the
    client's is the one the dashboard uses. A Ray without it gives None and the report says less.
    """
    try:
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeInstanceDetails

        client = _get_global_client()
        if client is None:
            return None
        return ServeInstanceDetails(**client.get_serve_details())
    except Exception:
        logging.getLogger(__name__).debug("no Serve details", exc_info=True)
        return None


def _replicas(details: Any, app_name: str, deployment: str) -> list[Replica]:
    if details is None or app_name not in details.applications:
        return []
    dep = details.applications[app_name].deployments.get(deployment)
    if dep is None:
        return []
    return [
        Replica(r.replica_id, str(r.state.value), r.node_id, r.node_ip) for r in dep.replicas
    ]


def _wait_running(app_name: str, deadline: float) -> str:
    """Until the app is RUNNING.

    A RUNNING seen here is this deploy's, also on a redeploy: ``run_many`` returns once Serve's
    controller has taken the new target, which puts the app in DEPLOYING at once.
    """
    from ray import serve

    status, message = "NOT_STARTED", ""
    while time.monotonic() < deadline:
        app = serve.status().applications.get(app_name)
        if app is not None:
            status, message = str(app.status.value), app.message
            if status == "RUNNING":
                return status
            # UNHEALTHY is waited out: a replica that failed its health check is replaced.
            if status == "DEPLOY_FAILED":
                raise ClusterError(f"the app failed to deploy: {message}")
        time.sleep(0.5)
    raise ClusterError(
        f"the app is still {status} after the timeout{': ' + message if message else ''} "
        "(a replica waiting for resources no node has? check `ray status`)"
    )


def _wait_http(url: str, deadline: float) -> None:
    """Until ``/models`` answers 200: a replica holds a routing table (controller or GCS)."""
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/models", timeout=5.0)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise ClusterError(
        f"the app is RUNNING but {url}/models did not answer 200 before the timeout (last: "
        f"{last}). A 503 means no routing table: is SIGSERVE_CONTROLLER_URL reachable from the "
        "cluster's nodes? No answer: is the port reachable from here (else --wait status)?"
    )


def serve_start_options(
    proxy_location: str, http_host: str, http_port: int, grpc_port: int | None = None
) -> dict[str, Any]:
    """``serve.start``'s arguments: HTTP always, gRPC when ``grpc_port`` (else
    ``SIGSERVE_GRPC_PORT``) is set and not 0, as ``sigserve up`` starts it (``stack.grpc_options``).
    """
    from sigserve.stack import grpc_options

    return {
        "proxy_location": proxy_location,
        "http_options": {"host": http_host, "port": http_port},
        **grpc_options(grpc_port),
    }


def _grpc_address(public_url: str, options: dict[str, Any]) -> str | None:
    grpc = options.get("grpc_options")
    if grpc is None:
        return None
    return f"{public_url.removeprefix('http://').rpartition(':')[0]}:{grpc.port}"


# The Ray Client server starts a server process of its own for each client. On a head that has
# just come up, that process for the first client can die before it serves ("Starting Ray client
# server failed", with an empty log): the compose demo's `serve` job met it on two runs out of two,
# 30-40 s after `ray start`, and the same command connected when run again.
CLIENT_START_FAILED = "Starting Ray client server failed"
CLIENT_ATTEMPTS = 3
CLIENT_RETRY_PAUSE_S = 2.0


def _connect(address: str, deadline: float, *, init: Any = None) -> int:
    """``ray.init`` on ``address``; a Ray Client whose server failed to start its process is
    tried again (``CLIENT_ATTEMPTS`` in all, before ``deadline``). The attempts it took."""
    if init is None:
        import ray

        init = ray.init
    attempt = 1
    while True:
        try:
            # No job-level runtime_env: build_app puts the forwarded variables on the deployment
            # itself, so a later deploy from a config file or another driver gets the same.
            init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            return attempt
        except ConnectionError as exc:
            again = (
                CLIENT_START_FAILED in str(exc)
                and attempt < CLIENT_ATTEMPTS
                and time.monotonic() + CLIENT_RETRY_PAUSE_S < deadline
            )
            if not again:
                raise ClusterError(f"no running Ray cluster at {address}: {exc}") from exc
        attempt += 1
        time.sleep(CLIENT_RETRY_PAUSE_S)


def deploy(
    address: str | None = None,
    *,
    http_host: str = "0.0.0.0",
    http_port: int = 8000,
    proxy_location: str = "EveryNode",
    timeout_s: float = 300.0,
    wait_http: bool = True,
    settings: Any = None,
    grpc_port: int | None = None,
) -> Deployed:
    """Deploy (or redeploy) the serving app onto a running cluster and wait until it serves.

    ``settings`` is a ``ServingSettings``; None reads ``SIGSERVE_*``. Serve's HTTP options are
    fixed when Serve first starts on a cluster: a later deploy with other ones keeps the running
    ones and says so in ``notes``. ``grpc_port`` (else ``SIGSERVE_GRPC_PORT``; 0 or neither:
    off) is where Serve's proxies serve the Open Inference Protocol's gRPC service.
    """
    address = resolve_address(address)
    if proxy_location not in PROXY_LOCATIONS:
        raise ClusterError(f"proxy location {proxy_location!r}: one of {PROXY_LOCATIONS}")
    import ray
    from pydantic import ValidationError
    from ray import serve

    from serving.app import DEPLOYMENT, build_app
    from serving.settings import ServingSettings

    if settings is None:
        try:
            settings = ServingSettings()
        except ValidationError as exc:
            raise ClusterError(f"SIGSERVE_* settings of the serving app: {exc}") from exc
    if settings.serving_token is None:
        # Said here, at once: the replicas would refuse to start, and Ray retry them for minutes.
        raise ClusterError(
            "SIGSERVE_SERVING_TOKEN is not set: serving replicas take only routing tables "
            "signed with the controller's serving token, so they need it (docs/security.md)"
        )
    _check_reachable(address)
    started = time.monotonic()
    deadline = started + timeout_s
    _connect(address, deadline)
    # Serve logs at INFO that it reuses its running controller on every call after the first;
    # what matters of that (HTTP options kept) is said in ``notes``.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        options = serve_start_options(proxy_location, http_host, http_port, grpc_port)
        serve.start(**options)
        notes: list[str] = []
        details = _serve_details()
        if details is not None and details.http_options is not None:
            running = (details.http_options.host, details.http_options.port)
            if running != (http_host, http_port):
                notes.append(
                    f"Serve already ran on this cluster with HTTP {running[0]}:{running[1]}, "
                    "which it keeps (`serve shutdown` to change it)"
                )
                http_host, http_port = running
        serve.run_many(
            [serve.RunTarget(build_app(settings), name=settings.app_name, route_prefix="/")],
            wait_for_applications_running=False,
        )
        status = _wait_running(settings.app_name, deadline)
        public, check = _urls(http_host, http_port)
        if wait_http and proxy_location != "Disabled":
            _wait_http(check, deadline)
        replicas = _replicas(_serve_details(), settings.app_name, DEPLOYMENT)
        return Deployed(
            app_name=settings.app_name,
            address=address,
            url=public,
            status=status,
            seconds=time.monotonic() - started,
            replicas=replicas,
            notes=notes,
            grpc=_grpc_address(public, options),
        )
    finally:
        # Disconnecting leaves the app: Serve's controller and replicas are detached actors.
        with contextlib.suppress(Exception):
            ray.shutdown()

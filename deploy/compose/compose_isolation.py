"""Who can read and reach what in the running stack, checked from inside its containers
(docs/security.md, "What each container can read"): each service's secrets are the files granted
to it and no others, the serving replicas' processes hold none of MLflow's, PostgreSQL's or the
admin's secrets, MLflow and the controller have no route to Ray's ports (the controller's proxy,
on Ray's network, has one: the control that the port listens), and Ray refuses a client
without its token (and takes the same client with it: the control that the token is what
differs)."""

from __future__ import annotations

import json
import subprocess
import time

from compose_docker import run
from compose_output import CheckFailed, expect, ok
from compose_stack import Stack

SECRETS_DIR = "/run/sigserve-secrets"
# Service -> the files it may read in SECRETS_DIR (deploy/compose/init-secrets.sh grants them).
GRANTS: dict[str, set[str]] = {
    "postgres": {"mlflow_password", "sigserve_password"},
    "mlflow": {
        "mlflow_encryption_key", "postgres_password", "mlflow_controller_password",
        "mlflow_serving_password", "mlflow_registrar_password", "mlflow_flask_secret_key",
    },
    "controller": {
        "admin_token", "serving_token", "webhook_secret", "postgres_password",
        "mlflow_tracking_password",
    },
    "ray-head": {"ray_token"},
    "ray-worker": {"ray_token"},
    "mlflow-gateway": set(),
    "controller-proxy": set(),
}
# Variables a serving replica's process must not hold (it holds model code: one trust domain).
NOT_FOR_REPLICAS = (
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "SIGSERVE_ADMIN_TOKEN",
    "SIGSERVE_WEBHOOK_SECRET",
    "PGPASSWORD",
    "RAY_AUTH_TOKEN",
)
# Ray's ports on the head: the GCS and the Ray Client server; then serving's HTTP and gRPC
# ingress, which the host reaches by their published ports and the rest of `ray` directly.
RAY_PORTS = (6379, 10001, 8000, 8001)
PROBE = "/opt/sigserve-compose/probe.py"


def _exec(stack: Stack, service: str, *argv: str, timeout: float = 60) -> tuple[int, str]:
    cid = stack.containers().get(service)
    if cid is None:
        raise CheckFailed(f"no container for {service}")
    try:
        result = run(["docker", "exec", cid, *argv], check=False, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"`{' '.join(argv)}` in {service} took over {timeout:.0f} s") from exc
    return result.returncode, (result.stdout + result.stderr)


def secret_files(stack: Stack) -> dict[str, set[str]]:
    """Service -> the secret files it can read (what its SECRETS_DIR holds)."""
    found = {}
    for service, granted in GRANTS.items():
        _, out = _exec(stack, service, "sh", "-c", f"ls -A {SECRETS_DIR} 2>/dev/null || true")
        found[service] = set(out.split())
        expect(
            found[service] == granted,
            f"{service} can read {sorted(found[service])} in {SECRETS_DIR}, "
            f"not just {sorted(granted)}",
        )
    return found


def replica_environment(stack: Stack) -> dict[str, list[str]]:
    """Node -> the secret variables its serving replicas' processes hold (none, or it fails)."""
    # A replica's process title starts "ray::ServeReplica:": read its /proc environ. (By the
    # start: this shell's own command line names it too.)
    script = (
        'for p in /proc/[0-9]*; do c=$(tr "\\0" " " <"$p/cmdline" 2>/dev/null) || continue; '
        'case $c in "ray::ServeReplica"*) tr "\\0" "\\n" <"$p/environ"; echo "--";; esac; done'
    )
    held: dict[str, list[str]] = {}
    replicas = 0
    for node in ("ray-head", "ray-worker"):
        _, out = _exec(stack, node, "sh", "-c", script)
        replicas += out.count("\n--")
        names = {line.split("=", 1)[0] for line in out.splitlines() if "=" in line}
        held[node] = sorted(names & set(NOT_FOR_REPLICAS))
        # The admin token by value too: a variable of another name must not carry it either.
        if stack.token in out:
            held[node].append("(the admin token's value)")
    expect(replicas > 0, "no serving replica process found on the Ray nodes")
    leaked = {node: names for node, names in held.items() if names}
    expect(not leaked, f"serving replicas hold secrets they do not need: {leaked}")
    stack.figures["replica_processes"] = replicas
    return held


def head_address(stack: Stack) -> str:
    """The Ray head's address on the `ray` network (by address, not name: MLflow cannot even
    resolve `ray-head`, and a name that does not resolve proves nothing about the route)."""
    cid = stack.containers()["ray-head"]
    info = json.loads(run(["docker", "inspect", cid]).stdout)[0]
    # Its one network (`ray`; `default` in a stack from before Ray had one of its own).
    [network] = info["NetworkSettings"]["Networks"].values()
    return str(network["IPAddress"])


# On Ray's network with no Ray token, and Ray installed (the app image): the control for the
# checks of MLflow's and the controller's route to Ray, and a Ray Client without the token.
ON_RAYS_NETWORK = "controller-proxy"


def ray_reachability(stack: Stack) -> dict[str, dict[int, bool]]:
    """Whether a TCP connection to each Ray port of the head is accepted, from MLflow and the
    controller (must not be) and from the controller's proxy (must be: the port listens on
    that address)."""
    address = head_address(stack)
    reach: dict[str, dict[int, bool]] = {}
    for service in ("mlflow", "controller", ON_RAYS_NETWORK):
        reach[service] = {}
        for port in RAY_PORTS:
            code, _ = _exec(stack, service, "python3", PROBE, "tcp", address, str(port))
            reach[service][port] = code == 0
    expect(
        all(reach[ON_RAYS_NETWORK].values()),
        f"{ON_RAYS_NETWORK} cannot reach Ray's ports at {address}: {reach[ON_RAYS_NETWORK]} "
        "(the control for the checks from MLflow and the controller)",
    )
    for service in ("mlflow", "controller"):
        expect(
            not any(reach[service].values()),
            f"the {service} container reaches Ray's ports at {address}: {reach[service]}",
        )
    return reach


CONNECT = (
    "import ray; ray.init('ray://ray-head:10001', logging_level='ERROR'); "
    "print('CONNECTED', ray.cluster_resources())"
)


def ray_needs_its_token(stack: Stack) -> tuple[str, float]:
    """A Ray Client from the controller proxy's container (Ray installed, a route to the head,
    no token of its own): refused without the token, and connected with it (so the token is what
    differs). The refusal, and how long the client took to give up."""
    started = time.monotonic()
    code, out = _exec(stack, ON_RAYS_NETWORK, "python3", "-c", CONNECT, timeout=240)
    refused_after = time.monotonic() - started
    expect(
        code != 0 and "CONNECTED" not in out,
        f"Ray took a client without its token:\n{out[-2000:]}",
    )
    _, token = _exec(stack, "ray-head", "cat", f"{SECRETS_DIR}/ray_token")
    env = ["env", "RAY_AUTH_MODE=token", f"RAY_AUTH_TOKEN={token.strip()}"]
    code, with_token = _exec(stack, ON_RAYS_NETWORK, *env, "python3", "-c", CONNECT, timeout=240)
    expect(
        code == 0 and "CONNECTED" in with_token,
        f"a Ray Client with the cluster's token, from the same container, was refused too, so "
        f"the refusal above proves nothing about the token:\n{with_token[-2000:]}",
    )
    last = out.strip().splitlines()[-1][:160] if out.strip() else ""
    return last, refused_after


def isolation(stack: Stack) -> None:
    secret_files(stack)
    ok(
        "each container reads only its own secrets: "
        + "; ".join(f"{s} {', '.join(sorted(g)) or 'none'}" for s, g in GRANTS.items())
    )
    replica_environment(stack)
    ok(
        f"{stack.figures['replica_processes']} serving replica processes hold none of "
        f"{', '.join(NOT_FOR_REPLICAS)} (nor the admin token's value)"
    )
    reach = ray_reachability(stack)
    ports = ", ".join(str(p) for p in RAY_PORTS)
    ok(
        f"Ray's and serving's ports ({ports}) on the head's address: refused from MLflow and "
        "the controller, "
        f"open from {ON_RAYS_NETWORK} ({reach})"
    )
    last, after_s = ray_needs_its_token(stack)
    ok(
        f"a Ray Client without Ray's token is refused ({last}, after {after_s:.0f} s); "
        "with it, from the same container, it connects"
    )

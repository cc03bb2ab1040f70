"""The compose demo hands each service only the secrets it needs, and keeps Ray to itself
(docs/security.md, "What each container can read"): ``deploy/compose/init-secrets.sh`` run on
temporary directories, and ``docker-compose.yml`` read as compose reads it. The running stack is
checked the same way from inside its containers by ``make compose-check``
(``deploy/compose/compose_isolation.py``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
INIT_SECRETS = ROOT / "deploy" / "compose" / "init-secrets.sh"
COMPOSE = ROOT / "docker-compose.yml"
SECRETS_DIR = "/run/sigserve-secrets"

# Grant (one volume each) -> the files in it. MLflow gets its webhook-encryption key and its own
# database role's password; the controller its tokens, the webhook secret and its role's password;
# the Ray nodes Ray's token alone (the replicas get the serving token with the deployment), and
# the `serve` job, which deploys the app through the Ray Client, the serving token and Ray's token.
# MLflow makes its users, so it holds their passwords; each MLflow client holds its own user's
# (mlflow_tracking_password): the controller, the replicas (through `serve`), the registration.
GRANTS = {
    "postgres": {"mlflow_password", "sigserve_password"},
    "mlflow": {
        "mlflow_encryption_key", "postgres_password", "mlflow_controller_password",
        "mlflow_serving_password", "mlflow_registrar_password", "mlflow_flask_secret_key",
    },
    "controller": {
        "admin_token", "serving_token", "webhook_secret", "postgres_password",
        "mlflow_tracking_password",
    },
    "ray": {"ray_token"},
    "serving": {"serving_token", "ray_token", "mlflow_tracking_password"},
    "register": {"mlflow_tracking_password"},
}
# Service -> the grant mounted at SECRETS_DIR (None: no secret at all).
MOUNTS = {
    "postgres": "secrets-postgres",
    "mlflow": "secrets-mlflow",
    "controller": "secrets-controller",
    "ray-head": "secrets-ray",
    "ray-worker": "secrets-ray",
    "serve": "secrets-serving",
    "mlflow-gateway": None,
    "controller-proxy": None,
    "register": "secrets-register",
}
# Service -> the MLflow user it acts as (docker-compose.yml) and the grant's file of its password.
MLFLOW_USERS = {
    "controller": ("sigserve-controller", "mlflow_controller_password"),
    "serve": ("sigserve-serving", "mlflow_serving_password"),
    "register": ("sigserve-registrar", "mlflow_registrar_password"),
}
RAY_SIDE = ("ray-head", "ray-worker", "serve")


MLFLOW_USERS_GRANTS = ("controller", "serving", "register")


def _init_secrets(tmp_path: Path, **env: str) -> tuple[Path, Path]:
    secrets, grants = tmp_path / "secrets", tmp_path / "grants"
    secrets.mkdir(exist_ok=True)
    for grant in GRANTS:
        (grants / grant).mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["sh", str(INIT_SECRETS), str(secrets), str(grants)],
        env={"PATH": "/usr/bin:/bin", **env},
        check=True,
        capture_output=True,
        text=True,
    )
    return secrets, grants


def _files(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in directory.iterdir() if p.is_file()}


pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")


def test_each_grant_holds_only_what_its_service_needs(tmp_path: Path) -> None:
    secrets, grants = _init_secrets(tmp_path)
    kept = _files(secrets)
    granted = {grant: _files(grants / grant) for grant in GRANTS}
    assert {grant: set(files) for grant, files in granted.items()} == GRANTS
    # The copies are the secrets themselves, under the name the service reads.
    assert granted["controller"]["admin_token"] == kept["admin_token"]
    assert granted["serving"]["serving_token"] == kept["serving_token"]
    assert granted["mlflow"]["mlflow_encryption_key"] == kept["mlflow_encryption_key"]
    # A password per PostgreSQL role: MLflow's cannot log in as the controller's, nor back.
    assert granted["mlflow"]["postgres_password"] == granted["postgres"]["mlflow_password"]
    assert granted["controller"]["postgres_password"] == granted["postgres"]["sigserve_password"]
    assert granted["postgres"]["mlflow_password"] != granted["postgres"]["sigserve_password"]
    # Each MLflow client holds its own user's password, the one MLflow makes that user with.
    for grant, file in (("controller", "mlflow_controller_password"),
                        ("serving", "mlflow_serving_password"),
                        ("register", "mlflow_registrar_password")):
        assert granted[grant]["mlflow_tracking_password"] == granted["mlflow"][file], grant
    assert len({granted[g]["mlflow_tracking_password"] for g in MLFLOW_USERS_GRANTS}) == 3
    assert all(len(value) >= 32 for value in kept.values())


def test_a_second_run_keeps_the_secrets_and_takes_back_what_is_no_longer_granted(
    tmp_path: Path,
) -> None:
    secrets, grants = _init_secrets(tmp_path)
    first = _files(secrets)
    # What an earlier version granted everyone: it must not stay in the serving volume.
    (grants / "serving" / "admin_token").write_text(first["admin_token"])
    _init_secrets(tmp_path)
    assert _files(secrets) == first
    assert set(_files(grants / "serving")) == GRANTS["serving"]


def test_a_value_from_the_environment_replaces_the_kept_one(tmp_path: Path) -> None:
    _init_secrets(tmp_path)
    given = "r" * 40
    _, grants = _init_secrets(tmp_path, SIGSERVE_RAY_TOKEN=given)
    assert (grants / "serving" / "ray_token").read_text() == given


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _secret_volumes(service: dict[str, Any]) -> dict[str, str]:
    """Volume name -> where the service mounts it (``:ro`` kept), for the secrets volumes."""
    mounts = {}
    for entry in service.get("volumes", []):
        name, target = entry.split(":", 1)
        if name.startswith("secrets"):
            mounts[name] = target
    return mounts


def test_each_service_mounts_only_its_own_grant() -> None:
    services = _compose()["services"]
    # Only init-secrets sees every secret; it runs without a network.
    writer = _secret_volumes(services["init-secrets"])
    assert writer.pop("secrets") == SECRETS_DIR
    assert writer == {f"secrets-{g}": f"/run/sigserve-grants/{g}" for g in GRANTS}
    assert services["init-secrets"]["network_mode"] == "none"
    for name, service in services.items():
        if name == "init-secrets":
            continue
        grant = MOUNTS[name]
        assert _secret_volumes(service) == ({grant: f"{SECRETS_DIR}:ro"} if grant else {}), name


def test_ray_has_a_network_of_its_own_and_its_token() -> None:
    services = _compose()["services"]
    networks = {name: set(s.get("networks", [])) for name, s in services.items()}
    for name in RAY_SIDE:
        assert networks[name] == {"ray"}, name
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN_PATH"] == f"{SECRETS_DIR}/ray_token", name
        # The token is read by path, never put in an environment Ray's processes inherit.
        assert "RAY_AUTH_TOKEN" not in env, name
    # MLflow and PostgreSQL have no route to Ray's ports.
    assert "ray" not in networks["mlflow"] | networks["postgres"]
    # The replicas reach MLflow through a service that is on Ray's network.
    tracking = services["serve"]["environment"]["MLFLOW_TRACKING_URI"]
    host = tracking.split("//")[1].split(":")[0]
    assert "ray" in networks[host] and host != "mlflow"
    # Only the head's serving ports (HTTP, gRPC) are published from the Ray side.
    assert [p.rsplit(":", 1)[1] for p in services["ray-head"]["ports"]] == ["8000", "8001"]
    assert "ports" not in services["ray-worker"]


def test_mlflow_runs_with_its_authentication_and_each_client_as_its_own_user() -> None:
    services = _compose()["services"]
    mlflow = services["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    # The users are made before the server starts, then the server is exec'd.
    assert mlflow["command"][:2] == ["python3", "/opt/sigserve-compose/mlflow_users.py"]
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_USERNAME"] == "sigserve-controller"
    users = {name: services[name]["environment"].get("MLFLOW_TRACKING_USERNAME")
             for name in MLFLOW_USERS}
    assert users == {name: user for name, (user, _) in MLFLOW_USERS.items()}
    # A user's password never sits in the compose file's environment: it comes from the grant.
    for service in services.values():
        assert "MLFLOW_TRACKING_PASSWORD" not in service.get("environment", {})
    # Anonymous requests are 401: whoever is signed in reads, no more, unless granted.
    ini = (ROOT / "deploy" / "compose" / "mlflow-auth.ini").read_text()
    assert "default_permission = READ" in ini


def test_mlflow_refuses_version_sources_outside_its_own_stores() -> None:
    regex = _compose()["services"]["mlflow"]["environment"][
        "MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX"
    ]
    # MLflow applies it with re.search (mlflow/server/handlers.py, _create_model_version).
    allowed = ["models:/m-0123abcd", "runs:/0123abcd/model", "mlflow-artifacts:/1/abc/artifacts"]
    refused = ["file:///etc", "/etc", "http://198.51.100.7/model", "s3://foreign/x",
               "mlflow-artifacts://evil.example/x", "x models:/m-1"]
    assert [s for s in allowed if not re.search(regex, s)] == []
    assert [s for s in refused if re.search(regex, s)] == []


def test_the_controller_is_reached_through_a_proxy_with_timeouts_except_by_mlflow() -> None:
    services = _compose()["services"]
    networks = {name: set(s.get("networks", [])) for name, s in services.items()}
    # Nothing on Ray's network (model code runs there) reaches the controller's own socket.
    assert networks["controller"] == {"registry"}
    assert "ports" not in services["controller"]
    proxy = services["controller-proxy"]
    assert networks["controller-proxy"] == {"registry", "ray"}
    assert [p.rsplit(":", 1)[1] for p in proxy["ports"]] == ["8080"]
    assert services["serve"]["environment"]["SIGSERVE_CONTROLLER_URL"] == (
        "http://controller-proxy:8080"
    )
    config = (ROOT / "deploy" / "compose" / "controller-proxy.cfg").read_text()
    # Headers and body within seconds (slowloris is cut there); a cap on connections held.
    header_timeout = re.search(r"^\s*timeout http-request (\d+)s$", config, re.M)
    assert header_timeout and int(header_timeout.group(1)) <= 30
    assert re.search(r"^\s*maxconn \d+$", config, re.M)
    # Held long-polls (up to SIGSERVE_LONG_POLL_MAX_S, 60 s) are not cut by the proxy.
    client = re.search(r"^\s*timeout client (\d+)s$", config, re.M)
    assert client and int(client.group(1)) > 60

"""deploy/kuberay/ checked without a Kubernetes (there is none here): every object against its
schema, strictly (an unknown field is an error, as with ``kubectl apply --validate=strict``),
the Serve config inside the RayService against Ray Serve's own schema and ``build_app``, the
names that tie the parts together, and who may reach Ray: its token authentication on every
node, and NetworkPolicies that admit Ray's ports only from Ray's pods and the serving ports only
from the pods of the app's namespace (evaluated here for the pods of the manifests). Broken
copies prove each check refuses what it should.

Schemas: Kubernetes' own (Deployment, Service, and the pod templates inside the RayService)
from the ``kubernetes-validate`` package; the RayService's from KubeRay's types, trimmed and
vendored in ``schemas/rayservice-ray.io-v1.json`` (its ``$comment`` says from where).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).parents[2]
KUBERAY = ROOT / "deploy" / "kuberay"
RAYSERVICE_SCHEMA = Path(__file__).parent / "schemas" / "rayservice-ray.io-v1.json"
K8S_VERSION = "1.33"
# The keys of the Secret `sigserve` (deploy/kuberay/README.md tells how to create it).
SECRET_KEYS = {"database-url", "admin-token", "webhook-secret", "serving-token"}


def _objects() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in ("controller.yaml", "rayservice.yaml", "networkpolicy.yaml"):
        docs += [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]
    return docs


def _kind(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [found] = [
        d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    return found


def _k8s_definitions() -> Resource[Any]:
    # Strict: additionalProperties false everywhere, so a misspelt field inside a pod template
    # of the RayService is refused too.
    text = (
        Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
        / f"v{K8S_VERSION}.0-local-strict" / "_definitions.json"
    ).read_text()
    return Resource.from_contents(json.loads(text))


def validate(doc: dict[str, Any]) -> None:
    """Raise a ``jsonschema.ValidationError`` (or kubernetes-validate's) for an invalid object."""
    if doc.get("kind") == "RayService":
        definitions = _k8s_definitions()
        registry: Registry[Any] = Registry().with_resource(
            "https://kubernetes.io/api/_definitions.json", definitions
        )
        schema = json.loads(RAYSERVICE_SCHEMA.read_text())
        jsonschema.Draft202012Validator(schema, registry=registry).validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def serve_config(rayservice: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    return config


def check_serve_config(rayservice: dict[str, Any]) -> None:
    """The Serve config as Ray Serve reads it (the schema its REST API validates with)."""
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config(rayservice))


def test_every_object_is_valid() -> None:
    docs = _objects()
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap", "Deployment", "NetworkPolicy", "NetworkPolicy", "RayService", "Service",
        "Service",
    ]
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in KUBERAY.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    for doc in docs:
        validate(doc)
    check_serve_config(_kind(docs, "RayService"))


def test_the_serve_config_builds_the_app_with_its_args(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.app import build_app
    from serving.settings import ServingSettings

    [app] = serve_config(_kind(_objects(), "RayService"))["applications"]
    assert app["import_path"] == "serving.app:build_app"
    for key, value in app["runtime_env"]["env_vars"].items():
        monkeypatch.setenv(key, value)
    # The settings the args make: every arg is a setting (a misspelt one would be ignored).
    assert set(app["args"]) <= set(ServingSettings.model_fields)
    settings = ServingSettings(**app["args"])
    assert settings.autoscaling_config() == {
        "min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16.0,
    }
    built = build_app(app["args"])
    assert type(built).__name__ == "Application"


def test_the_parts_refer_to_each_other() -> None:
    docs = _objects()
    deployment = _kind(docs, "Deployment")
    service = _kind(docs, "Service", "sigserve-controller")
    rayservice = _kind(docs, "RayService")
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    # One writer per database: a rollout must not run two controllers at once.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    container, proxy = pod["spec"]["containers"]
    port = service["spec"]["ports"][0]
    # The Service reaches the proxy, never the controller itself (on 127.0.0.1).
    assert port["targetPort"] in [p["name"] for p in proxy["ports"]]
    assert "ports" not in container
    [app] = serve_config(rayservice)["applications"]
    assert app["args"]["controller_url"] == (
        f"http://{service['metadata']['name']}:{port['port']}"
    )
    # The probes ask the controller's real health routes.
    from controller.health import router

    routes = {getattr(r, "path", None) for r in router.routes}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    assert container["readinessProbe"]["httpGet"]["port"] == proxy["ports"][0]["containerPort"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SIGSERVE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "database-url"
    # Every secret comes from the one Secret, under a key the README tells users to create.
    pods = [pod, rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"],
            *(g["template"] for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"])]
    refs = [e["valueFrom"]["secretKeyRef"] for p in pods for c in p["spec"]["containers"]
            for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    assert {r["name"] for r in refs} == {"sigserve"}
    assert {r["key"] for r in refs} == SECRET_KEYS
    readme = (KUBERAY / "README.md").read_text()
    assert all(f"--from-literal={key}=" in readme for key in SECRET_KEYS)
    # Replicas ask for a resource only the worker group's pods have.
    workers = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    [resource] = app["args"]["replica_resources"]
    assert all(resource in w["rayStartParams"]["resources"] for w in workers)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return edit


_DELETE = object()
_WORKER = "spec.rayClusterConfig.workerGroupSpecs.0"
_HEAD = "spec.rayClusterConfig.headGroupSpec"


@pytest.mark.parametrize(
    ("kind", "edit"),
    [
        # rayStartParams are strings: `num-cpus: 0` is the classic mistake.
        ("RayService", _set(f"{_HEAD}.rayStartParams.num-cpus", 0)),
        ("RayService", _set(f"{_WORKER}.groupName", _DELETE)),
        ("RayService", _set(f"{_WORKER}.maxReplicas", "4")),
        ("RayService", _set("spec.rayClusterConfig.headGroupSpecs",
                            {"template": {}})),  # a misspelt field
        ("RayService", _set("spec.upgradeStrategy", {"type": "Rolling"})),
        # Inside the pod template: Kubernetes' own schema, through the RayService's.
        ("RayService", _set(f"{_HEAD}.template.spec.containers.0.imagePullPolicy", 1)),
        ("RayService", _set(f"{_WORKER}.template.spec.containers.0.resource", {})),
        ("RayService", _set("spec.serveConfigV2", {"applications": []})),
        ("Deployment", _set("spec.template.spec.containers.0.readinessProb", {})),
        ("Deployment", _set("spec.template.spec.containers.1.ports.0.containerPort", "8080")),
        ("Deployment", _set("spec.selector", _DELETE)),
        ("Service/sigserve-controller", _set("spec.ports.0.port", "http")),
        ("Service/sigserve-grpc", _set("spec.ports.0.appProtocl", "grpc")),
        ("RayService", _set("spec.rayClusterConfig.authOptions.mode", "tokens")),
        ("NetworkPolicy", _set("spec.ingress.0.form", [])),
        ("NetworkPolicy", _set("spec.ingress.2.ports.0.port", [8000])),
    ],
)
def test_a_broken_copy_is_refused(kind: str, edit: Callable[[dict[str, Any]], None]) -> None:
    kind, _, name = kind.partition("/")
    original = (
        _kind(_objects(), kind, name or None) if kind != "NetworkPolicy"
        else _policies()["ray-head"]
    )
    validate(original)
    broken = copy.deepcopy(original)
    edit(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["applications"][0].pop("import_path"),
        lambda c: c.update(proxy_location="Everywhere"),
        lambda c: c["http_options"].update(port="eight thousand"),
        lambda c: c["grpc_options"].update(port="eight thousand one"),
    ],
)
def test_a_broken_serve_config_is_refused(edit: Callable[[dict[str, Any]], None]) -> None:
    from pydantic import ValidationError

    broken = copy.deepcopy(_kind(_objects(), "RayService"))
    config = serve_config(broken)
    edit(config)
    broken["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    validate(broken)  # still a string: only Serve's own schema sees inside it
    with pytest.raises(ValidationError):
        check_serve_config(broken)


# --- Who may reach Ray -------------------------------------------------------------------------

# Ray's ports on the head (the GCS, the dashboard, the Ray Client server) and the serving ports.
RAY_HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
SERVE_PORT = 8000
GRPC_PORT = 8001
OPERATOR = {"app.kubernetes.io/name": "kuberay-operator"}
ANY_POD = {"app": "something-else"}


def _policies() -> dict[str, dict[str, Any]]:
    """Component (ray-head, ray-worker) -> the NetworkPolicy selecting its pods."""
    found = {}
    for doc in _objects():
        if doc["kind"] == "NetworkPolicy":
            found[doc["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]] = doc
    return found


def _pod_labels() -> dict[str, dict[str, str]]:
    docs = _objects()
    cluster = _kind(docs, "RayService")["spec"]["rayClusterConfig"]
    labels: dict[str, dict[str, str]] = {
        "controller": _kind(docs, "Deployment")["spec"]["template"]["metadata"]["labels"],
        "ray-head": cluster["headGroupSpec"]["template"]["metadata"]["labels"],
    }
    for group in cluster["workerGroupSpecs"]:
        labels["ray-worker"] = group["template"]["metadata"]["labels"]
    return labels


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions In/NotIn/Exists)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        value, present = labels.get(e["key"]), e["key"] in labels
        ok = {
            "In": present and value in e.get("values", []),
            "NotIn": not present or value not in e.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[e["operator"]]
        if not ok:
            return False
    return True


# The namespace the manifests are applied in (kustomization.yaml names none), and another one.
HERE = {"kubernetes.io/metadata.name": "the-apps-namespace"}
ELSEWHERE = {"kubernetes.io/metadata.name": "elsewhere"}


def _peer_admits(peer: dict[str, Any], source: dict[str, str], namespace: dict[str, str]) -> bool:
    if "ipBlock" in peer:
        return True  # an address range may hold any pod: counted as open
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], namespace):
            return False
    elif namespace != HERE:
        return False  # a podSelector alone means the policy's own namespace
    return _selects(peer.get("podSelector", {}), source)


def admits(
    policy: dict[str, Any], source: dict[str, str], port: int, namespace: dict[str, str] = HERE
) -> bool:
    """Whether ``policy`` admits TCP to ``port`` from a pod labelled ``source`` in a namespace
    labelled ``namespace`` (the policy's own by default; a rule without ``from`` admits every
    source, in every namespace and beyond the cluster)."""
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports is not None and not any(
            p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in ports
        ):
            continue
        peers = rule.get("from")
        if peers is None or any(_peer_admits(peer, source, namespace) for peer in peers):
            return True
    return False


def rules_without_from(policy: dict[str, Any]) -> list[dict[str, Any]]:
    """The rules that say no ``from``: open to anything that reaches the pod's address."""
    return [rule for rule in policy["spec"].get("ingress", []) if not rule.get("from")]


def test_ray_runs_with_its_token_on_every_node() -> None:
    cluster = _kind(_objects(), "RayService")["spec"]["rayClusterConfig"]
    # KubeRay then sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN on every Ray container (head,
    # every worker group) and uses the token for the dashboard it submits the Serve config to.
    assert cluster["authOptions"] == {"mode": "token"}
    major, minor, _ = (int(x) for x in cluster["rayVersion"].split("."))
    assert (major, minor) >= (2, 52)  # Ray's token authentication
    # Nobody turns it off for one group by hand.
    pods = [cluster["headGroupSpec"]["template"],
            *(g["template"] for g in cluster["workerGroupSpecs"])]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}
    readme = (KUBERAY / "README.md").read_text()
    assert "RAY_AUTH_MODE=token" in readme and "RAY_AUTH_TOKEN" in readme


def test_rays_ports_admit_only_rays_pods() -> None:
    policies, labels = _policies(), _pod_labels()
    assert set(policies) == {"ray-head", "ray-worker"}
    for component, policy in policies.items():
        assert _selects(policy["spec"]["podSelector"], labels[component])
        assert not _selects(policy["spec"]["podSelector"], labels["controller"])
        assert policy["spec"]["policyTypes"] == ["Ingress"]
    head = policies["ray-head"]
    # Every port the head pod declares is checked, and nothing else is declared.
    [container] = _kind(_objects(), "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"][
        "template"]["spec"]["containers"]
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert declared == {**RAY_HEAD_PORTS, "serve": SERVE_PORT, "grpc": GRPC_PORT}
    for port in RAY_HEAD_PORTS.values():
        assert admits(head, labels["ray-worker"], port)
        assert admits(head, labels["ray-head"], port)
        # The controller holds the admin token but is no Ray pod; anything else neither.
        assert not admits(head, labels["controller"], port), port
        assert not admits(head, ANY_POD, port), port
    # The operator, in its own namespace: the dashboard, where it submits the Serve config, and
    # nothing else of Ray's.
    assert admits(head, OPERATOR, RAY_HEAD_PORTS["dashboard"], ELSEWHERE)
    assert not admits(head, OPERATOR, RAY_HEAD_PORTS["gcs-server"])
    assert not admits(head, OPERATOR, RAY_HEAD_PORTS["client"])
    # Clients reach serving on every Ray pod (the serve Service selects them all), over HTTP
    # and gRPC: every pod of the namespace, none of another (docs/security.md: "every pod here").
    for policy in policies.values():
        assert rules_without_from(policy) == []
        for port in (SERVE_PORT, GRPC_PORT):
            assert admits(policy, ANY_POD, port)
            assert admits(policy, labels["controller"], port)
            assert not admits(policy, ANY_POD, port, ELSEWHERE), port
            assert not admits(policy, labels["ray-head"], port, ELSEWHERE), port
    worker = policies["ray-worker"]
    for port in (6379, 10001, 8265, 52365, 12345):  # a raylet's or worker's port, say
        assert admits(worker, labels["ray-head"], port)
        assert not admits(worker, labels["controller"], port)
        assert not admits(worker, OPERATOR, port, ELSEWHERE)


@pytest.mark.parametrize(
    "edit",
    [
        # A rule that opens Ray's ports to every pod (the mistake the policy exists against).
        lambda p: p["spec"]["ingress"].append({"from": [{"podSelector": {}}]}),
        # The serving port's rule without its port: everything to everyone.
        lambda p: p["spec"]["ingress"][2].pop("ports"),
        # The Ray pods' rule selecting by name alone: the controller is `sigserve` too.
        lambda p: p["spec"]["ingress"][0]["from"][0]["podSelector"].update(
            matchExpressions=[{"key": "app.kubernetes.io/name", "operator": "In",
                               "values": ["sigserve"]}]),
    ],
)
def test_an_opened_policy_is_caught(edit: Callable[[dict[str, Any]], None]) -> None:
    head = copy.deepcopy(_policies()["ray-head"])
    edit(head)
    validate(head)  # still a valid NetworkPolicy: only the evaluation sees the hole
    assert admits(head, _pod_labels()["controller"], RAY_HEAD_PORTS["gcs-server"])


@pytest.mark.parametrize("component", ["ray-head", "ray-worker"])
@pytest.mark.parametrize(
    "edit",
    [
        # The clients' rule without its `from`: the serving ports to the whole cluster and beyond.
        lambda p: p["spec"]["ingress"][-1].pop("from"),
        # Every namespace's pods.
        lambda p: p["spec"]["ingress"][-1]["from"][0].update(namespaceSelector={}),
        # A peer by address range.
        lambda p: p["spec"]["ingress"][-1]["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}}),
    ],
    ids=["no from", "every namespace", "an address range"],
)
def test_a_serving_port_opened_beyond_the_namespace_is_caught(
    component: str, edit: Callable[[dict[str, Any]], None]
) -> None:
    policy = copy.deepcopy(_policies()[component])
    assert not admits(policy, ANY_POD, SERVE_PORT, ELSEWHERE)
    edit(policy)
    validate(policy)  # still a valid NetworkPolicy: only the evaluation sees the hole
    assert admits(policy, ANY_POD, SERVE_PORT, ELSEWHERE)
    assert admits(policy, ANY_POD, GRPC_PORT, ELSEWHERE)


def test_the_controller_listens_on_loopback_behind_a_proxy_with_timeouts() -> None:
    docs = _objects()
    pod = _kind(docs, "Deployment")["spec"]["template"]["spec"]
    container, proxy = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SIGSERVE_CONTROLLER_HOST"] == "127.0.0.1"
    [volume] = pod["volumes"]
    config_map = _kind(docs, "ConfigMap")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    [mount] = proxy["volumeMounts"]
    assert proxy["command"][-1] == f"{mount['mountPath']}/haproxy.cfg"
    config = config_map["data"]["haproxy.cfg"]
    assert f"server controller 127.0.0.1:{env['SIGSERVE_CONTROLLER_PORT']} " in config
    assert f"bind :{proxy['ports'][0]['containerPort']}" in config
    header_timeout = re.search(r"^\s*timeout http-request (\d+)s$", config, re.M)
    assert header_timeout and int(header_timeout.group(1)) <= 30
    client = re.search(r"^\s*timeout client (\d+)s$", config, re.M)
    assert client and int(client.group(1)) > 60  # held long-polls are not cut


# --- gRPC -------------------------------------------------------------------------------------

# The label KubeRay puts on a RayService's pods that may take traffic: a worker pod always (its
# readiness probe decides), the head pod while its Serve proxy is healthy.
KUBERAY_SERVE_LABEL = {"ray.io/serve": "true"}


def test_grpc_is_wired_from_the_serve_config_to_the_network_policy() -> None:
    """The Open Inference Protocol's gRPC port, end to end: Serve's grpc_options (the servicer
    function sigserve up registers, importable here as Serve imports it), every Ray pod's
    container port, the Service clients call, and the NetworkPolicies admitting it as they
    admit HTTP. KubeRay's own serve Service carries only the port named `serve`, so gRPC needs
    the Service of its own that this checks."""
    import importlib

    from sigserve.stack import GRPC_SERVICER, grpc_message_limit

    docs = _objects()
    rayservice = _kind(docs, "RayService")
    grpc = serve_config(rayservice)["grpc_options"]
    assert grpc["grpc_servicer_functions"] == [GRPC_SERVICER]
    module, _, function = GRPC_SERVICER.rpartition(".")
    assert callable(getattr(importlib.import_module(module), function))
    port = grpc["port"]

    cluster = rayservice["spec"]["rayClusterConfig"]
    pods = {"ray-head": cluster["headGroupSpec"]["template"]}
    for group in cluster["workerGroupSpecs"]:
        pods[f"ray-worker/{group['groupName']}"] = group["template"]
    for where, pod in pods.items():
        [container] = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == port, where
        # Ray's gRPC servers take what sigserve up lets them take, not Ray's 2 GiB.
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] == str(grpc_message_limit()), where

    service = _kind(docs, "Service", "sigserve-grpc")
    [service_port] = service["spec"]["ports"]
    assert service_port["port"] == port and service_port["targetPort"] == "grpc"
    assert service_port["appProtocol"] == "grpc"
    # It selects every Ray pod KubeRay marks as serving, and nothing else of the app's.
    selector = {"matchLabels": service["spec"]["selector"]}
    for where, pod in pods.items():
        labels = pod["metadata"]["labels"]
        assert _selects(selector, {**labels, **KUBERAY_SERVE_LABEL}), where
        assert not _selects(selector, labels), where  # not before KubeRay says it serves
    controller = _kind(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not _selects(selector, {**controller, "ray.io/serve": "false"})
    assert not _selects(selector, controller)

    for component, policy in _policies().items():
        assert admits(policy, ANY_POD, port), component
        assert admits(policy, _pod_labels()["controller"], port), component

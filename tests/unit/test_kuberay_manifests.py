"""deploy/kuberay/ checked without a Kubernetes (there is none here): every object against its
schema, strictly (an unknown field is an error, as with ``kubectl apply --validate=strict``),
the Serve config inside the RayService against Ray Serve's own schema and ``build_app``, and the
names that tie the parts together. Broken copies prove each check refuses what it should.

Schemas: Kubernetes' own (Deployment, Service, and the pod templates inside the RayService)
from the ``kubernetes-validate`` package; the RayService's from KubeRay's types, trimmed and
vendored in ``schemas/rayservice-ray.io-v1.json`` (its ``$comment`` says from where).
"""

from __future__ import annotations

import copy
import json
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
    for name in ("controller.yaml", "rayservice.yaml"):
        docs += [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]
    return docs


def _kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == kind]
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
    assert sorted(d["kind"] for d in docs) == ["Deployment", "RayService", "Service"]
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
    deployment, service = _kind(docs, "Deployment"), _kind(docs, "Service")
    rayservice = _kind(docs, "RayService")
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    # One writer per database: a rollout must not run two controllers at once.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    [container] = pod["spec"]["containers"]
    port = service["spec"]["ports"][0]
    assert port["targetPort"] in [p["name"] for p in container["ports"]]
    [app] = serve_config(rayservice)["applications"]
    assert app["args"]["controller_url"] == (
        f"http://{service['metadata']['name']}:{port['port']}"
    )
    # The probes ask the controller's real health routes.
    from controller.health import router

    routes = {getattr(r, "path", None) for r in router.routes}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
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
        ("Deployment", _set("spec.template.spec.containers.0.ports.0.containerPort", "8080")),
        ("Deployment", _set("spec.selector", _DELETE)),
        ("Service", _set("spec.ports.0.port", "http")),
    ],
)
def test_a_broken_copy_is_refused(kind: str, edit: Callable[[dict[str, Any]], None]) -> None:
    original = _kind(_objects(), kind)
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

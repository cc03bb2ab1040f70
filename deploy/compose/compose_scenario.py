"""The scenario, run from the host against the running stack: the notebook's requests, a
version going live through MLflow's webhook, and a controller restart that decides nothing
again."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from compose_output import CheckFailed, expect, ok, say
from compose_stack import Stack

MODEL = "translation_model"
EMBEDDINGS = "minilm_embeddings"
JSON = {"content-type": "application/json"}


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    """Call ``probe`` until it returns something truthy; that value, or CheckFailed."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout_s:.0f} s waiting for {what} ({last!r})")
        time.sleep(every_s)


def replica_placement(stack: Stack) -> None:
    """Where ``serve`` says the replicas run: on both Ray nodes, when it says at all."""
    lines = re.findall(r"replica\s+\S+\s+(\S+) on node (\S+)", stack.logs("serve", tail=50))
    stack.figures["replicas"] = replicas = [f"{state}@{node}" for state, node in lines]
    if replicas:
        nodes = {r.split("@")[1] for r in replicas}
        expect(len(nodes) == 2, f"serving replicas not on both Ray nodes: {replicas}")
        ok(f"serving replicas on both Ray nodes: {', '.join(replicas)}")
    else:
        say("  ? `serve` printed no replica lines; where the replicas run is not checked")


def describe(stack: Stack, name: str) -> dict[str, Any]:
    r = httpx.get(f"{stack.serving}/models/{name}", timeout=10)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def states_of(described: dict[str, Any]) -> dict[str, str]:
    return {str(v["version"]): str(v["state"]) for v in described["versions"]}


def predict(
    stack: Stack,
    body: Any,
    *,
    model: str = MODEL,
    version: str | None = None,
    header: str | None = None,
) -> httpx.Response:
    path = f"/models/{model}/versions/{version}/serve" if version else f"/models/{model}/serve"
    headers = {**JSON, **({"serve_multiplexed_model_id": header} if header else {})}
    return httpx.post(f"{stack.serving}{path}", json=body, headers=headers, timeout=60)


def audit_events(admin: httpx.Client, name: str, limit: int) -> list[dict[str, Any]]:
    r = admin.get(f"/admin/models/{name}/events", params={"limit": limit})
    r.raise_for_status()
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def scenario_notebook(stack: Stack) -> None:
    model = describe(stack, MODEL)
    states = states_of(model)
    expect(model["default_version"] == "1", f"default version {model['default_version']}, not 1")
    expect(states.get("1") == "live" and states.get("2") == "live", f"states {states}")
    ok(f"{MODEL}: default v1, states {states}")

    r = predict(stack, {"prompt": "Hello, my name is Jon."})
    expect(r.status_code == 200, f"v1 by default: {r.status_code} {r.text[:300]}")
    expect("translation_text" in r.json()[0], f"v1 answer {r.text[:200]}")
    ok(f"v1 by default: 200 {r.text[:70]}")

    r = predict(stack, [{"prompt": "Hello"}, {"prompt": "Bye"}], header="2")
    expect(r.status_code == 200 and len(r.json()) == 2, f"v2 by header: {r.status_code} {r.text}")
    ok("v2 by header (two records): 200, two answers")

    r = predict(stack, {"prompt": "Hello"}, version="3")
    problem = r.json()
    expect(r.status_code == 409, f"v3: {r.status_code} {r.text[:300]}")
    expect(r.headers["content-type"].startswith("application/problem+json"), "v3: not problem+json")
    expect(bool(problem.get("reasons")), f"v3's 409 has no reasons: {problem}")
    ok(f"v3: 409 with reasons: {problem['reasons'][0]!r}")

    r = predict(stack, {"text": "a cat"}, model=EMBEDDINGS)
    expect(r.status_code == 200 and len(r.json()[0]["embedding"]) > 100, f"{EMBEDDINGS}: {r.text}")
    ok(f"{EMBEDDINGS}: 200, a {len(r.json()[0]['embedding'])}-dimensional embedding")

    r = httpx.get(f"{stack.controller}/admin/models/{MODEL}", timeout=10)
    expect(r.status_code == 401, f"admin API without the token: {r.status_code}")
    with stack.admin() as admin:
        r = admin.put(f"/admin/models/{MODEL}/default", json={"version": "3"})
        expect(r.status_code == 409, f"pin to v3 without force: {r.status_code} {r.text[:300]}")
        ok("admin API: 401 without the token; a pin to v3 is refused (409)")
        r = admin.put(f"/admin/models/{MODEL}/default", json={"version": "2"})
        expect(r.status_code == 200, f"pin v2: {r.status_code} {r.text[:300]}")
    pinned_at = time.monotonic()
    wait_for(
        "serving to take the pin", lambda: describe(stack, MODEL)["default_version"] == "2", 30
    )
    stack.figures["pin_to_serving_s"] = time.monotonic() - pinned_at
    r = predict(stack, {"prompt": "Hello"})
    expect(r.status_code == 200, f"default after the pin: {r.status_code} {r.text[:300]}")
    ok(
        f"pin to v2 (admin API): serving's default is v2 after "
        f"{stack.figures['pin_to_serving_s']:.2f} s, and answers 200"
    )


def register_version(stack: Stack, work: Path) -> tuple[str, float]:
    """Register a new translation version from the host; (version, when it was created)."""
    # Imported here: MLflow and transformers take seconds to import, and only this step needs them.
    import mlflow
    from mlflow.tracking import MlflowClient

    from sigserve.demo.register import DEMO_EXPERIMENT, log_translation_version
    from sigserve.demo.tiny_t5 import build_tiny_t5

    mlflow.set_tracking_uri(stack.mlflow)
    # MLflow runs with its own authentication: the check registers as the demo's registrar.
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = (
        stack.registrar
    )
    experiment = MlflowClient().get_experiment_by_name(DEMO_EXPERIMENT)
    if experiment is None:
        raise CheckFailed(f"no experiment {DEMO_EXPERIMENT} in MLflow")
    hf_dir = work / "tiny-t5"
    # MLflow's and transformers' prints and progress bars go to a file, not between the lines.
    with (
        (work / "registration.log").open("a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        if not hf_dir.exists():
            build_tiny_t5(hf_dir)
        version = log_translation_version(
            MODEL,
            lang_to="de",
            input_label="prompt",
            hf_dir=hf_dir,
            experiment_id=str(experiment.experiment_id),
        )
    return version, time.monotonic()


def decision_actors(stack: Stack, version: str) -> list[str]:
    """Who made each decision about ``version``, oldest first: the webhook's reconcile, then
    (issue 17) the serving replica whose proof made it live."""
    with stack.admin() as admin:
        events = audit_events(admin, MODEL, limit=100)
    found = [str(e["actor"]) for e in events if e["kind"] == "decision" and e["version"] == version]
    return sorted(found, key=lambda actor: not actor.startswith("webhook:"))


def new_version_goes_live(stack: Stack, work: Path, label: str) -> None:
    version, created = register_version(stack, work)

    def live() -> bool:
        return states_of(describe(stack, MODEL)).get(version) == "live"

    wait_for(f"v{version} to be live in serving", live, 120, every_s=0.05)
    to_live = time.monotonic() - created
    wait_for(
        f"a 200 from v{version}",
        lambda: predict(stack, {"prompt": "Hi"}, version=version).status_code == 200,
        180,
        every_s=0.2,
    )
    to_200 = time.monotonic() - created
    actors = decision_actors(stack, version)
    actor = actors[0] if actors else ""
    expect(actor.startswith("webhook:"), f"v{version} was decided by {actors}, not a webhook")
    stack.figures[f"{label}_to_live_s"] = to_live
    stack.figures[f"{label}_to_200_s"] = to_200
    ok(
        f"v{version} registered from the host: live in serving {to_live:.2f} s after it was "
        f"created, first 200 after {to_200:.2f} s; decided by {actor.split(':')[0]} "
        f"delivery {actor.split(':', 1)[1][:12]}..."
        + ("; then live by a serving replica's proof" if len(actors) > 1 else "")
    )


def decisions(stack: Stack) -> dict[str, Any]:
    """What the controller holds: defaults, states, reasons, decision times, audit event ids."""
    snapshot: dict[str, Any] = {}
    with stack.admin() as admin:
        for name in (MODEL, EMBEDDINGS):
            r = admin.get(f"/admin/models/{name}")
            r.raise_for_status()
            body = r.json()
            snapshot[name] = {
                "default": body["default_version"],
                "versions": {
                    v["version"]: (v["state"], v.get("reasons"), v.get("decided_at"))
                    for v in body["versions"]
                },
                "events": [e["id"] for e in audit_events(admin, name, limit=500)],
            }
    return snapshot


def controller_restart(stack: Stack) -> None:
    before = decisions(stack)
    started = time.monotonic()
    stack.run("restart", "controller", timeout=120)
    # The controller is starting again: serving answers from the table it holds.
    r = predict(stack, {"prompt": "While the controller restarts"})
    expect(r.status_code == 200, f"serving during the controller's restart: {r.status_code}")

    def ready() -> bool:
        return httpx.get(f"{stack.controller}/readyz?full=true", timeout=5).status_code == 200

    wait_for("the controller to be ready again", ready, 180, every_s=0.2)
    stack.figures["controller_restart_s"] = time.monotonic() - started
    after = decisions(stack)
    expect(after == before, f"decisions changed across the restart:\n{before}\n{after}")
    versions = sum(len(m["versions"]) for m in after.values())
    ok(
        f"controller restarted (ready again in {stack.figures['controller_restart_s']:.1f} s); "
        f"serving answered 200 meanwhile; all {versions} decisions, both defaults and the audit "
        "log are as before (nothing decided again)"
    )

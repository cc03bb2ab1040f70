"""The models and servers ``serving_throughput.py`` compares: the two registered models, each
target's path and body, the servers it starts (``mlflow models serve``, MLServer, the
notebook's app) and the checks that every path answers before a round starts."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
from bench_stack import HOST, Stack
from mlserver_peer import running_mlserver
from wrk import Endpoint, write_wrk_script

from sigserve.ports import free_port
from sigserve.processes import ManagedProcess

HERE = Path(__file__).resolve().parent
UPPER_MODEL = HERE / "models" / "upper.py"
TARGETS = (
    "sigserve", "sigserve-invocations", "sigserve-v2", "mlflow", "mlserver", "mlserver-v2",
    "notebook",
)  # fmt: skip
SIGSERVE_TARGETS = ("sigserve", "sigserve-invocations", "sigserve-v2")
MLSERVER_TARGETS = ("mlserver", "mlserver-v2")


@dataclass(frozen=True)
class ModelSpec:
    key: str  # trivial | minilm
    name: str  # registered model name
    column: str
    value: str


MODELS = {
    "trivial": ModelSpec("trivial", "bench_upper", "prompt", "hello world"),
    "minilm": ModelSpec("minilm", "bench_minilm", "text", "The weather is lovely today"),
}


# --- readiness -----------------------------------------------------------------------------------


def wait_until(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{what}: not ready within {timeout_s:.0f}s")


def post_ok(client: httpx.Client, endpoint: Endpoint) -> bool:
    r = client.post(
        endpoint.url, content=endpoint.body, headers={"Content-Type": "application/json"}
    )
    return r.status_code == 200


def sigserve_serves(client: httpx.Client, serving: str, name: str, endpoint: Endpoint) -> bool:
    r = client.get(f"{serving}/models/{name}")
    if r.status_code != 200 or not r.json().get("default_version"):
        return False
    return post_ok(client, endpoint)


# --- models --------------------------------------------------------------------------------------


def register_trivial(name: str) -> str:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({"prompt": ["hello world"]})
    with mlflow.start_run(run_name=f"{name} (upper-case)"):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(UPPER_MODEL),
            pip_requirements=["mlflow", "pandas"],
            signature=infer_signature(example, pd.DataFrame({"output": ["HELLO WORLD"]})),
            input_example=example,
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def register_minilm(name: str) -> str:
    from sigserve.demo.register import log_embedding_version, minilm_model_dir

    return log_embedding_version(name, model_dir=minilm_model_dir())


def v2_body(spec: ModelSpec) -> dict[str, object]:
    """One record as the Open Inference Protocol sends it: a BYTES tensor named for the column."""
    tensor = {"name": spec.column, "datatype": "BYTES", "shape": [1], "data": [spec.value]}
    return {"inputs": [tensor]}


def mlflow_serve_argv(model_uri: str, port: int, workers: int) -> list[str]:
    argv = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
        "--env-manager", "local", "-p", str(port), "-h", HOST, "-w", str(workers),
    ]  # fmt: skip
    return argv


def mlflow_serve_env(tracking_uri: str) -> dict[str, str]:
    # ``mlflow models serve`` execs ``uvicorn`` found on PATH: this interpreter's first.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}


# --- targets -------------------------------------------------------------------------------------


@dataclass
class Targets:
    """Every (model, target) path with its body and wrk script, and the servers started for
    them (stopped by ``stop``; MLServer's go with the ``ExitStack`` passed to ``start``)."""

    endpoints: dict[tuple[str, str], Endpoint] = field(default_factory=dict)
    # (model, target) -> the process serving it, when this module started one.
    servers: dict[tuple[str, str], ManagedProcess] = field(default_factory=dict)

    def stop(self) -> None:
        for proc in self.servers.values():
            proc.stop()


def start_targets(
    targets: Targets,
    versions: dict[str, str],
    wanted: list[str],
    mlflow_variants: dict[str, int],
    stack: Stack,
    client: httpx.Client,
    peers: contextlib.ExitStack,
) -> None:
    """Fills ``targets`` with every (model, target) of ``wanted`` for the registered
    ``versions``, starting the servers they need."""
    home, tracking_uri, serving = stack.home, stack.tracking_uri, stack.serving_url
    endpoints, servers = targets.endpoints, targets.servers
    for model in versions:
        spec = MODELS[model]
        record = {spec.column: spec.value}
        records = json.dumps({"dataframe_records": [record]})
        v2 = json.dumps(v2_body(spec))
        paths = {
            "sigserve": (f"/models/{spec.name}/serve", json.dumps([record])),
            "sigserve-invocations": (f"/models/{spec.name}/invocations", records),
            "sigserve-v2": (f"/v2/models/{spec.name}/infer", v2),
        }
        for target, (path, body) in paths.items():
            if target in wanted:
                endpoints[(model, target)] = Endpoint(serving + path, body)
        if any(t in MLSERVER_TARGETS for t in wanted):
            uri = f"models:/{spec.name}/{versions[model]}"
            peer = peers.enter_context(running_mlserver(spec.name, uri, home, tracking_uri))
            servers[(model, "mlserver")] = peer.process
            if "mlserver" in wanted:
                endpoints[(model, "mlserver")] = Endpoint(peer.invocations, records)
            if "mlserver-v2" in wanted:
                endpoint = Endpoint(peer.infer, v2)
                if post_ok(client, endpoint):
                    endpoints[(model, "mlserver-v2")] = endpoint
                else:
                    print(f"mlserver-v2 cannot serve {model}: left out", flush=True)
        for target, workers in mlflow_variants.items():
            port = free_port()
            servers[(model, target)] = ManagedProcess(
                f"mlflow models serve {spec.name} -w {workers}",
                mlflow_serve_argv(f"models:/{spec.name}/{versions[model]}", port, workers),
                env=mlflow_serve_env(tracking_uri),
                log_path=home / "logs" / f"mlflow-serve-{model}-{target}.log",
                health_url=f"http://{HOST}:{port}/ping",
            ).start()
            endpoints[(model, target)] = Endpoint(
                f"http://{HOST}:{port}/invocations", json.dumps({"dataframe_records": [record]})
            )
        if "notebook" in wanted:
            from notebook_baseline import notebook_app
            from ray import serve

            serve.run(
                notebook_app(spec.name, versions[model]),
                name=f"notebook-{model}",
                route_prefix=f"/notebook/{model}",
                blocking=False,
            )
            endpoints[(model, "notebook")] = Endpoint(
                f"{serving}/notebook/{model}/serve", json.dumps(record)
            )
    scripts = home / "wrk"
    scripts.mkdir()
    for (model, target), endpoint in endpoints.items():
        endpoint.script = write_wrk_script(scripts, f"{model}-{target}", endpoint.body)


def wait_ready(targets: Targets, serving: str, client: httpx.Client) -> None:
    """Until every path answers its body with a 200, then one answer of each, printed."""
    t0 = time.monotonic()
    for (model, target), endpoint in targets.endpoints.items():
        what = f"{target} serving {model}"
        if target in SIGSERVE_TARGETS:
            name = MODELS[model].name
            wait_until(what, partial(sigserve_serves, client, serving, name, endpoint), 600)
        else:
            if (model, target) in targets.servers:
                targets.servers[(model, target)].wait_healthy(600)
            wait_until(what, partial(post_ok, client, endpoint), 600)
        print(f"ready: {what} ({time.monotonic() - t0:.0f}s)", flush=True)
    for (model, target), endpoint in targets.endpoints.items():
        r = client.post(
            endpoint.url, content=endpoint.body, headers={"Content-Type": "application/json"}
        )
        answer = r.text[:100]
        print(f"  {model:8s} {target:10s} POST {endpoint.url} {endpoint.body} -> {answer}")

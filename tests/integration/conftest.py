"""One real stack per test session: an `mlflow server` (SQLite, webhooks on), a local Ray with
the serving application, and the controller as a child process that tests may stop, kill and
restart. Every port is free-picked; everything started here is stopped here, by pid."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from sigserve.ports import free_port
from sigserve.processes import ManagedProcess
from sigserve.stack import Secrets, controller, mlflow_server

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
RESYNC_INTERVAL_S = 4.0
ECHO_MODEL = Path(__file__).parent / "models" / "tagged_echo.py"


def wait_for(predicate: Callable[[], Any], timeout_s: float = 30.0, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s}s (last: {last!r})")


class ControllerHandle:
    """The controller as a user runs it: a process with a URL, stoppable and restartable."""

    def __init__(self, home: Path, tracking_uri: str, secrets: Secrets) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.tracking_uri = tracking_uri
        self.secrets = secrets
        self.admin = {"Authorization": f"Bearer {secrets.admin_token}"}
        self._process: ManagedProcess | None = None
        self.webhook_url = f"{self.url}/webhooks/mlflow"

    def start(self) -> None:
        self._process = controller(
            self.home, host=HOST, port=self.port, tracking_uri=self.tracking_uri,
            admin_token=self.secrets.admin_token, webhook_secret=self.secrets.webhook_secret,
            resync_interval_s=RESYNC_INTERVAL_S, serving_token=self.secrets.serving_token,
        ).start()
        self._process.wait_healthy(120)

    def stop(self) -> None:
        if self._process:
            self._process.stop()
            self._process = None

    def model(self, name: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/admin/models/{name}", headers=self.admin)
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def state_of(self, name: str, version: str) -> str | None:
        r = httpx.get(f"{self.url}/admin/models/{name}", headers=self.admin)
        if r.status_code != 200:
            return None
        for v in r.json()["versions"]:
            if v["version"] == version:
                return str(v["state"])
        return None


@pytest.fixture(scope="session")
def home() -> Iterator[Path]:
    # Short on purpose: Ray puts Unix sockets under its temp dir (107-byte path limit).
    path = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def secrets(home: Path) -> Secrets:
    return Secrets.load_or_create(home)


@pytest.fixture(scope="session")
def tracking_uri(home: Path, secrets: Secrets) -> Iterator[str]:
    port = free_port()
    server = mlflow_server(home, host=HOST, port=port,
                           encryption_key=secrets.mlflow_encryption_key).start()
    try:
        server.wait_healthy(180)
        uri = f"http://{HOST}:{port}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        yield uri
    finally:
        server.stop()


@pytest.fixture(scope="session")
def controller_handle(home: Path, tracking_uri: str, secrets: Secrets
                      ) -> Iterator[ControllerHandle]:
    handle = ControllerHandle(home, tracking_uri, secrets)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture()
def ctl(controller_handle: ControllerHandle) -> Iterator[ControllerHandle]:
    """The controller, running: a test that stopped it gets it started again after."""
    yield controller_handle
    if controller_handle._process is None:
        controller_handle.start()


def register_echo(name: str, *, tag: str, input_label: str = "prompt",
                  output_label: str = "answer", pip_requirements: list[str] | None = None,
                  input_example: bool = False) -> str:
    """Log and register a TaggedEcho version; returns its version number. Without an input
    example by default: its proof then only loads it (controller/proofs.py)."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    example_in = pd.DataFrame({input_label: ["x"]})
    example_out = pd.DataFrame({output_label: ["x"]})
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ECHO_MODEL),
            signature=infer_signature(example_in, example_out),
            model_config={"tag": tag, "input_label": input_label, "output_label": output_label},
            pip_requirements=pip_requirements or [],
            input_example=example_in if input_example else None,
            registered_model_name=name,
        )
    return str(info.registered_model_version)


@pytest.fixture(scope="session")
def grpc_port() -> int:
    """Where the session's stack serves the Open Inference Protocol over gRPC."""
    return free_port()


@pytest.fixture(scope="session")
def serving_url(home: Path, tracking_uri: str, controller_handle: ControllerHandle,
                grpc_port: int) -> Iterator[str]:
    from sigserve.stack import ray_temp_dir, start_serving, stop_serving

    port = free_port()
    try:
        start_serving(home=home, host=HOST, port=port, tracking_uri=tracking_uri,
                      controller_url=controller_handle.url, num_cpus=2,
                      serving_token=controller_handle.secrets.serving_token,
                      grpc_port=grpc_port)
        yield f"http://{HOST}:{port}"
    finally:
        stop_serving()
        # Ray's temp dir is named from `home` and lives beside it, not in it; with the
        # runtime-env venvs of environments built in the session it weighs ~2 GB.
        shutil.rmtree(ray_temp_dir(home).parent, ignore_errors=True)


def server_call(method: str) -> Any:
    """Call a method of the (single) serving replica through a deployment handle."""
    from ray import serve

    from serving.app import DEPLOYMENT

    handle = serve.get_deployment_handle(DEPLOYMENT, app_name="sigserve")
    return getattr(handle, method).remote().result()


def runner_loads() -> list[str]:
    """Model ids the (single) serving replica has tried to load, in order."""
    loads: list[str] = server_call("loads")
    return loads


def load_attempted(name: str, version: str) -> bool:
    """Whether the serving replica ever tried to load any artifact of ``name`` version ``version``.

    Model ids are ``name/version@key`` (the key names the checked artifact).
    """
    return bool(loads_of(name, version))


def loads_of(name: str, version: str) -> list[str]:
    """The replica's load attempts of any artifact of ``name`` version ``version``, in order."""
    return [i for i in runner_loads() if i.startswith(f"{name}/{version}@")]


def serve_status(url: str, name: str, version: str | None = None,
                 body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    path = f"/models/{name}/versions/{version}/serve" if version else f"/models/{name}/serve"
    return httpx.post(f"{url}{path}", json=body if body is not None else {"prompt": "hi"},
                      headers=headers, timeout=30)


def artifact_dir(home: Path, name: str, version: str) -> Path:
    """Where the MLflow server keeps a version's files (``--artifacts-destination``)."""
    from mlflow import MlflowClient

    source = MlflowClient().get_model_version_download_uri(name, version)
    parsed = urlparse(source)
    assert parsed.scheme == "mlflow-artifacts", source
    path = home.resolve() / "mlflow-artifacts" / parsed.path.lstrip("/")
    assert (path / "MLmodel").is_file(), path
    return path


def log_pickled() -> Any:
    """Log, without registering, a pickled pyfunc (``python_model.pkl``) of the echo's
    signature; its ``ModelInfo``."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    class Pickled(mlflow.pyfunc.PythonModel):
        def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
            return pd.DataFrame({"answer": [f"pickled:{p}" for p in model_input["prompt"]]})

    with mlflow.start_run():
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=Pickled(),
            signature=infer_signature(pd.DataFrame({"prompt": ["x"]}),
                                      pd.DataFrame({"answer": ["x"]})),
            pip_requirements=[],
        )


def register_pickled(name: str) -> str:
    """Log and register a pickled pyfunc (``python_model.pkl``) of the echo's signature."""
    import mlflow

    return str(mlflow.register_model(log_pickled().model_uri, name).version)


def problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    assert "Traceback" not in response.text
    body: dict[str, Any] = response.json()
    return body


def check_cli(handle: ControllerHandle, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str], columns: int) -> Callable[..., tuple[int, str]]:
    """`sigserve check ...` as a user with the admin token runs it against ``handle``: its exit
    code and what it printed, whitespace folded (the terminal ``columns`` wide)."""
    from sigserve.cli import main

    monkeypatch.setenv("SIGSERVE_ADMIN_TOKEN", handle.secrets.admin_token)
    monkeypatch.setenv("SIGSERVE_CONTROLLER_URL", handle.url)
    monkeypatch.setenv("COLUMNS", str(columns))

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["check", *argv])
        out, err = capsys.readouterr()
        return code, " ".join((out + err).split())

    return run


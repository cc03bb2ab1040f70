"""The fault suite's stack: the integration tests' session (a real `mlflow server`, the controller
as a child process, Ray Serve), with the parts a fault needs to stop and start again.

Everything under ``tests/fault`` is marked ``fault``: ``make test`` leaves it out (it kills and
restarts processes and waits out outages, minutes in all); ``make fault`` runs it.

What this adds to ``tests/integration/conftest.py``:

- ``mlflow_handle``: the MLflow server as a handle that can be stopped and started again on the same
  store and port (``tracking_uri`` comes from it, so every other fixture is unchanged);
- ``start_controller``: the session's controller started with extra environment (say, the fault
  seam ``SIGSERVE_FAULT_KILL_AT``, see ``controller/faults.py``), without waiting on MLflow;
- ``Poller``: a thread that asks a URL every ``every_s`` and counts what came back;
- ``figures``: measured figures, printed as they are taken and again at the end of the run.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from sigserve.ports import free_port
from sigserve.processes import ManagedProcess
from sigserve.stack import Secrets, controller, mlflow_server
from tests.figures import FigureBook, Figures
from tests.integration.conftest import (  # noqa: F401  (fixtures, used by name)
    HOST,
    RESYNC_INTERVAL_S,
    ControllerHandle,
    controller_handle,
    ctl,
    grpc_port,
    home,
    secrets,
    serving_url,
    wait_for,
)

_HERE = Path(__file__).parent
_BOOK = FigureBook("fault figures", ".2f")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fault: kills and restarts real processes (make fault; not in make test)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: marked before `-m` selects, so `-m "not fault"` leaves these out.
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.fault)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    _BOOK.summary(terminalreporter)


@pytest.fixture()
def figures(request: pytest.FixtureRequest) -> Figures:
    return _BOOK.figures(request.node.name)


class MlflowHandle:
    """The session's MLflow server: stoppable, and started again on the same store and port."""

    def __init__(self, root: Path, encryption_key: str) -> None:
        self.home = root
        self.port = free_port()
        self.uri = f"http://{HOST}:{self.port}"
        self._key = encryption_key
        self._process: ManagedProcess | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def start(self, timeout_s: float = 180.0) -> None:
        self._process = mlflow_server(
            self.home, host=HOST, port=self.port, encryption_key=self._key
        ).start()
        self._process.wait_healthy(timeout_s)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def pause(self) -> None:
        """SIGSTOP the server's process group: connections are taken, nothing is answered."""
        assert self._process is not None and self._process.pid is not None
        os.killpg(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None and self._process.pid is not None
        os.killpg(self._process.pid, signal.SIGCONT)


@pytest.fixture(scope="session")
def mlflow_handle(home: Path, secrets: Secrets) -> Iterator[MlflowHandle]:  # noqa: F811
    handle = MlflowHandle(home, secrets.mlflow_encryption_key)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def tracking_uri(mlflow_handle: MlflowHandle) -> str:
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_handle.uri
    return mlflow_handle.uri


@pytest.fixture()
def mlflow_up(mlflow_handle: MlflowHandle) -> Iterator[MlflowHandle]:
    """The MLflow server, running: a test that stopped it gets it started again after."""
    yield mlflow_handle
    if mlflow_handle.running:
        mlflow_handle.resume()  # a test that paused it and failed
    else:
        mlflow_handle.stop()
        mlflow_handle.start()


def start_controller(
    handle: ControllerHandle, env: Mapping[str, str] | None = None, *, full: bool = True
) -> ManagedProcess:
    """Start the session's controller (same port, database, secrets) with extra environment.

    ``full=False`` waits on ``/readyz`` only (the controller's own readiness), for a start
    while MLflow is down.
    """
    process = controller(
        handle.home, host=HOST, port=handle.port, tracking_uri=handle.tracking_uri,
        admin_token=handle.secrets.admin_token, webhook_secret=handle.secrets.webhook_secret,
        resync_interval_s=RESYNC_INTERVAL_S, serving_token=handle.secrets.serving_token,
    )  # fmt: skip
    process.env.update(env or {})
    if not full:
        process.health_url = f"{handle.url}/readyz"
    handle._process = process.start()
    process.wait_healthy(120)
    return process


def controller_db(handle: ControllerHandle) -> Path:
    return handle.home / "controller.db"


def stored_versions(handle: ControllerHandle, name: str) -> dict[str, dict[str, Any]]:
    """A model's versions as the controller's database holds them, read with sqlite3 (for when
    the controller is not running)."""
    with sqlite3.connect(f"file:{controller_db(handle)}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT version, state, reasons, decided_at FROM model_versions "
            "WHERE model_name = ?",
            (name,),
        ).fetchall()
    return {v: {"state": s, "reasons": r, "decided_at": d} for v, s, r, d in rows}


def decision_events(handle: ControllerHandle, name: str) -> list[dict[str, Any]]:
    """A model's ``decision`` events from the audit log, oldest first."""
    r = httpx.get(f"{handle.url}/admin/models/{name}/events", params={"limit": 500},
                  headers=handle.admin, timeout=30)
    r.raise_for_status()
    return [e for e in reversed(r.json()["events"]) if e["kind"] == "decision"]


def reconciled(handle: ControllerHandle) -> float:
    """Reconcile passes that ended well since the controller started."""
    for line in httpx.get(f"{handle.url}/metrics", timeout=10).text.splitlines():
        if line.startswith('sigserve_reconciles_total{result="ok"}'):
            return float(line.split()[-1])
    return 0.0


class Poller:
    """Asks ``call()`` every ``every_s`` in a thread; counts the answers (a status code, or the
    exception's name when none came)."""

    def __init__(self, call: Callable[[], httpx.Response], every_s: float = 0.5) -> None:
        self._call = call
        self._every_s = every_s
        self._stop = threading.Event()
        self.answers: list[tuple[float, int | str, float]] = []  # (at, status, took)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status: int | str = self._call().status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            self.answers.append((started, status, time.monotonic() - started))
            self._stop.wait(max(0.0, self._every_s - (time.monotonic() - started)))

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @property
    def statuses(self) -> Counter[int | str]:
        return Counter(status for _, status, _ in self.answers)

    @property
    def slowest(self) -> float:
        return max((took for _, _, took in self.answers), default=0.0)

"""``sigserve up``: start the local stack, show where it is, stop all of it on Ctrl-C.

Order: MLflow, then the controller (which registers its own webhook in MLflow), then Ray and the
serving app, then the demo models. Stopping goes the other way, and every child is stopped by
the process group this process started, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from pydantic import ValidationError
from rich.console import Console
from rich.panel import Panel

from controller.settings import settings_error
from sigserve.log_follow import StackLog, stack_log_files
from sigserve.processes import ProcessFailed
from sigserve.settings import StackSettings
from sigserve.stack import Secrets, controller, mlflow_server, start_serving, stop_serving


class PortInUse(RuntimeError):
    pass


def _check_free(host: str, port: int, what: str) -> None:
    with socket.socket() as s:
        # As the servers themselves bind: a port with only TIME_WAIT connections is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise PortInUse(
                f"{what} port {port} on {host} is in use; set SIGSERVE_{what.upper()}_PORT"
            ) from exc


@contextlib.contextmanager
def _chatter_to(log_path: Path) -> Iterator[None]:
    """Send MLflow's and transformers' prints and progress bars to a log file meanwhile.

    The console keeps what a person needs (what was registered, and why the T5 is tiny); the
    rest ("View run ...", weight-loading bars) is kept in the log.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    mlflow_logger = logging.getLogger("mlflow")
    level = mlflow_logger.level
    mlflow_logger.setLevel(logging.WARNING)
    try:
        with (
            log_path.open("a") as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            yield
    finally:
        mlflow_logger.setLevel(level)


def _banner(s: StackSettings, token: str) -> tuple[Panel, list[str]]:
    """Where things are (in a panel) and curl lines to try (unwrapped, so they paste whole)."""
    serving = f"http://{s.host}:{s.serving_port}"
    ctl = f"http://{s.host}:{s.controller_port}"
    where = [
        f"MLflow       http://{s.host}:{s.mlflow_port}",
        f"Serving      {serving}   (OpenAPI: {serving}/docs)",
        *([f"gRPC         {s.host}:{s.grpc_listen_port()}   (Open Inference Protocol)"]
          if s.grpc_listen_port() else []),
        f"Controller   {ctl}",
        f"Metrics      {ctl}/metrics, http://{s.host}:{s.metrics_port}/metrics (serving)",
        f"Admin token  {token}",
        f"State        {s.home.resolve()}",
    ]
    json_header = "-H 'content-type: application/json'"
    auth = f"-H 'Authorization: Bearer {token}'"
    tries = [
        f"curl -s {serving}/models",
        f"curl -s -X POST {serving}/models/translation_model/serve {json_header} "
        """-d '{"prompt": "Hello, my name is Jon."}'""",
        f"curl -s -X POST {serving}/models/translation_model/serve {json_header} "
        """-H 'serve_multiplexed_model_id: 2' -d '[{"prompt": "Hello"}, {"prompt": "Bye"}]'""",
        f"curl -s -X POST {serving}/models/translation_model/versions/3/serve {json_header} "
        """-d '{"prompt": "Hello"}'   # 409, with the reasons""",
        f"curl -s -X POST {serving}/models/minilm_embeddings/serve {json_header} "
        """-d '{"text": "a cat sits on the mat"}'""",
        f"curl -s {auth} {ctl}/admin/models/translation_model",
        f"curl -s -X PUT {auth} {json_header} "
        f"""-d '{{"version": "2"}}' {ctl}/admin/models/translation_model/default""",
    ]
    return Panel("\n".join(where), title="sigserve is up", expand=False), tries


def run_local_stack(settings: StackSettings | None = None) -> int:
    # Bound to the real stdout, so it still reaches the user while library chatter is redirected.
    console = Console(file=sys.stdout)
    try:
        s = settings or StackSettings()
    except ValidationError as exc:
        # Before anything starts: a secret the controller would refuse stops the stack here.
        console.print(f"sigserve up: not started: {settings_error(exc)}", style="red",
                      markup=False, highlight=False, soft_wrap=True)  # fmt: skip
        return 1
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        if not stop.is_set():
            stop.set()
            raise KeyboardInterrupt

    def _catch_signals() -> None:
        # Explicitly, and again after ray.init: Ray installs its own SIGTERM handler (which
        # aborts the process with no clean-up), and a shell may start us with SIGINT ignored.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _on_signal)

    _catch_signals()
    home = s.home.resolve()
    # What the parts log from now on, shown once the stack is up (sigserve.log_follow).
    story = StackLog(stack_log_files(home),
                     lambda text, style: console.print(text, style=style, markup=False,
                                                       highlight=False, soft_wrap=True))
    generated = Secrets.load_or_create(home)
    token = s.chosen("admin_token", generated.admin_token)
    webhook_secret = s.chosen("webhook_secret", generated.webhook_secret)
    serving_token = s.chosen("serving_token", generated.serving_token)
    tracking_uri = f"http://{s.host}:{s.mlflow_port}"
    controller_url = f"http://{s.host}:{s.controller_port}"
    try:
        for port, what in (
            (s.mlflow_port, "mlflow"),
            (s.controller_port, "controller"),
            (s.serving_port, "serving"),
            (s.metrics_port, "metrics"),
            (s.grpc_listen_port(), "grpc"),
        ):
            if port:
                _check_free(s.host, port, what)
    except PortInUse as exc:
        console.print(f"[red]{exc}[/red]")
        return 1

    with ExitStack() as stack:
        try:
            with console.status("Starting MLflow (SQLite store, webhooks on)..."):
                mlflow = mlflow_server(
                    home,
                    host=s.host,
                    port=s.mlflow_port,
                    encryption_key=generated.mlflow_encryption_key,
                ).start()
                stack.callback(mlflow.stop)
                mlflow.wait_healthy(180)
            console.print(f"[green]✓[/green] MLflow at {tracking_uri}")
            with console.status("Starting the controller and registering its webhook..."):
                ctl = controller(
                    home,
                    host=s.host,
                    port=s.controller_port,
                    tracking_uri=tracking_uri,
                    admin_token=token,
                    webhook_secret=webhook_secret,
                    serving_token=serving_token,
                    # Up a little later; only `sigserve check --prove` asks it.
                    serving_url=f"http://{s.host}:{s.serving_port}",
                ).start()
                stack.callback(ctl.stop)
                ctl.wait_healthy(120)
            console.print(f"[green]✓[/green] controller at {controller_url} (webhook registered)")
            with console.status("Starting Ray and the serving app (about 20 s)..."):
                stack.callback(stop_serving)
                start_serving(
                    home=home,
                    host=s.host,
                    port=s.serving_port,
                    tracking_uri=tracking_uri,
                    controller_url=controller_url,
                    num_cpus=s.ray_num_cpus,
                    fast_path=s.fast_path,
                    serving_token=serving_token,
                    metrics_export_port=s.metrics_port,
                    grpc_port=s.grpc_listen_port(),
                )
                _catch_signals()
            console.print(f"[green]✓[/green] serving app at http://{s.host}:{s.serving_port}")
            if s.register_demo_models:
                from sigserve.demo.register import register_demo_models

                with (
                    console.status("Registering the demo models..."),
                    _chatter_to(home / "logs" / "demo-registration.log"),
                ):
                    register_demo_models(tracking_uri, console=console)
                console.print("[green]✓[/green] demo models registered")
            panel, tries = _banner(s, token)
            console.print(panel)
            console.print("Try:")
            for line in tries:
                console.print(f"  {line}", soft_wrap=True, highlight=False, markup=False)
            console.print(f"Ctrl-C stops everything. What happens (all of it in {home / 'logs'}):")
            stack.callback(story.start().stop)
            stop.wait()
        except KeyboardInterrupt:
            pass
        except (ProcessFailed, TimeoutError) as exc:
            console.print(f"Start-up failed: {exc}", style="red", markup=False)
            return 1
        except Exception as exc:  # anything else: say what, then still stop what started
            console.print(
                f"Start-up failed: {type(exc).__name__}: {exc}", style="red", markup=False
            )
            console.print(f"Logs: {home / 'logs'}", markup=False)
            return 1
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut clean-up
            console.print("Stopping everything...")
    console.print("Stopped.")
    return 0

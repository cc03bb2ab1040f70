"""The stack every benchmark runs on, started the way ``sigserve up`` and the tests start it.

    with running_stack("bench-") as stack:
        ...  # stack.tracking_uri (MLflow is set to it), stack.serving_url, stack.admin

An MLflow server, the controller and (unless ``serving=False``) the serving app on a local Ray,
all on free ports under a temp home; everything is stopped by pid and the home removed when the
block ends, however it ends.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sigserve.ports import free_port
from sigserve.processes import ManagedProcess
from sigserve.stack import (
    Secrets,
    controller,
    mlflow_server,
    start_serving,
    stop_serving,
)

HOST = "127.0.0.1"
UPPER_MODEL = Path(__file__).resolve().parent / "models" / "upper.py"


def log_upper_model(tracking_uri: str) -> Any:
    """Log the small model from code (``models/upper.py``: a string ``prompt`` in, ``output``
    out) in a run of its own; MLflow's ``ModelInfo`` of it."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    example = pd.DataFrame({"prompt": ["hi"]})
    with mlflow.start_run():
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(UPPER_MODEL),
            pip_requirements=["mlflow", "pandas", "numpy"],
            signature=infer_signature(example, pd.DataFrame({"output": ["HI"]})),
        )


@dataclass(frozen=True)
class Stack:
    home: Path
    tracking_uri: str
    controller_url: str
    serving_url: str
    admin: dict[str, str]
    mlflow: ManagedProcess
    controller: ManagedProcess


@contextmanager
def running_stack(
    prefix: str,
    *,
    serving: bool = True,
    resync_interval_s: float = 300,
    register_webhook: bool = True,
    **serving_options: Any,
) -> Iterator[Stack]:
    """Start the stack; ``serving_options`` go to ``start_serving`` (say, ``fast_path``)."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    secrets = Secrets.load_or_create(home)
    mlflow_port, ctl_port, serve_port = free_port(), free_port(), free_port()
    tracking_uri = f"http://{HOST}:{mlflow_port}"
    controller_url = f"http://{HOST}:{ctl_port}"
    server = mlflow_server(
        home, host=HOST, port=mlflow_port, encryption_key=secrets.mlflow_encryption_key
    )
    ctl = controller(
        home,
        host=HOST,
        port=ctl_port,
        tracking_uri=tracking_uri,
        admin_token=secrets.admin_token,
        serving_token=secrets.serving_token,
        webhook_secret=secrets.webhook_secret,
        resync_interval_s=resync_interval_s,
        register_webhook=register_webhook,
    )
    stack = Stack(
        home=home,
        tracking_uri=tracking_uri,
        controller_url=controller_url,
        serving_url=f"http://{HOST}:{serve_port}",
        admin={"Authorization": f"Bearer {secrets.admin_token}"},
        mlflow=server,
        controller=ctl,
    )
    try:
        server.start().wait_healthy(180)
        if serving:
            ctl.start().wait_healthy(120)
            start_serving(
                home=home,
                host=HOST,
                port=serve_port,
                tracking_uri=tracking_uri,
                controller_url=controller_url,
                serving_token=secrets.serving_token,
                num_cpus=2,
                **serving_options,
            )
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        yield stack
    finally:
        stop_serving()  # nothing to do when no Ray was started
        ctl.stop()
        server.stop()
        shutil.rmtree(home, ignore_errors=True)

"""The compose demo's one-shot `register` job: register the demo models, wait until serving
has decided them, say where everything is.

It registers what ``sigserve up`` registers (``sigserve.demo.register``: translation_model v1
en->de, v2 en->fr, v3 with a renamed input, and minilm_embeddings), and is idempotent, so a
second ``docker compose up`` registers nothing new. Then it waits until the serving app's table
holds every registered version decided (live or quarantined), which is the moment the README's
curl lines work, and prints them with the host's ports and the admin token.

Environment: ``MLFLOW_TRACKING_URI`` (the registry), ``SIGSERVE_SERVING_URL`` (serving, as this
container reaches it), ``SIGSERVE_PUBLIC_SERVING_URL`` / ``SIGSERVE_PUBLIC_CONTROLLER_URL`` /
``SIGSERVE_PUBLIC_MLFLOW_URL`` / ``SIGSERVE_PUBLIC_GRPC_ADDRESS`` (as the host reaches them,
for the printed lines),
``SIGSERVE_ADMIN_TOKEN`` (set from the secrets volume by the entrypoint), and
``SIGSERVE_DEMO_WAIT_S`` (how long to wait for the decisions, 600 by default).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import httpx

from sigserve.demo.register import register_demo_models

DECIDED = frozenset({"live", "quarantined"})


def _undecided(table: dict[str, Any], expected: list[tuple[str, str]]) -> list[str]:
    """Registered versions that the serving table does not hold decided yet, as name/version."""
    states = {
        (model["name"], str(v["version"])): v["state"]
        for model in table.get("models", [])
        for v in model.get("versions", [])
    }
    return [f"{n}/{v}" for n, v in expected if states.get((n, v)) not in DECIDED]


def wait_decided(serving_url: str, expected: list[tuple[str, str]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    with httpx.Client(timeout=10.0) as client:
        while True:
            try:
                r = client.get(f"{serving_url}/models")
                if r.status_code == 200:
                    missing = _undecided(r.json(), expected)
                    if not missing:
                        return
                    last = f"not decided yet: {', '.join(missing)}"
                else:
                    last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise TimeoutError(f"serving did not hold the demo's decisions in time ({last})")
            time.sleep(1.0)


def banner(serving: str, controller: str, mlflow: str, token: str, grpc: str = "") -> str:
    json_header = "-H 'content-type: application/json'"
    auth = f"-H 'Authorization: Bearer {token}'"
    lines = [
        "sigserve compose demo is up",
        f"  MLflow       {mlflow}",
        f"  Serving      {serving}   (OpenAPI: {serving}/docs)",
        *([f"  gRPC         {grpc}   (Open Inference Protocol)"] if grpc else []),
        f"  Controller   {controller}",
        f"  Admin token  {token}",
        "Try:",
        f"  curl -s {serving}/models/translation_model",
        f"  curl -s -X POST {serving}/models/translation_model/serve {json_header} "
        """-d '{"prompt": "Hello, my name is Jon."}'""",
        f"  curl -s -X POST {serving}/models/translation_model/serve {json_header} "
        """-H 'serve_multiplexed_model_id: 2' -d '[{"prompt": "Hello"}, {"prompt": "Bye"}]'""",
        f"  curl -s -X POST {serving}/models/translation_model/versions/3/serve {json_header} "
        """-d '{"prompt": "Hello"}'   # 409, with the reasons""",
        f"  curl -s -X POST {serving}/models/minilm_embeddings/serve {json_header} "
        """-d '{"text": "a cat sits on the mat"}'""",
        f"  curl -s {auth} {controller}/admin/models/translation_model",
        f"  curl -s -X PUT {auth} {json_header} "
        f"""-d '{{"version": "2"}}' {controller}/admin/models/translation_model/default""",
    ]
    return "\n".join(lines)


def main() -> int:
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    serving_url = os.environ.get("SIGSERVE_SERVING_URL", "http://ray-head:8000")
    registered = register_demo_models(tracking_uri)
    try:
        wait_decided(serving_url, registered, float(os.environ.get("SIGSERVE_DEMO_WAIT_S", "600")))
    except TimeoutError as exc:
        print(f"register: {exc}", file=sys.stderr)
        return 1
    print(
        banner(
            os.environ.get("SIGSERVE_PUBLIC_SERVING_URL", "http://127.0.0.1:8000"),
            os.environ.get("SIGSERVE_PUBLIC_CONTROLLER_URL", "http://127.0.0.1:8080"),
            os.environ.get("SIGSERVE_PUBLIC_MLFLOW_URL", "http://127.0.0.1:5000"),
            os.environ.get(
                "SIGSERVE_ADMIN_TOKEN",
                "(see: docker compose exec controller cat /run/sigserve-secrets/admin_token)",
            ),
            os.environ.get("SIGSERVE_PUBLIC_GRPC_ADDRESS", ""),
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

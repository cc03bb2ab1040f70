"""The fast path on the real stack: HAProxy in front, batches per version, defaults loaded
before they are answered from. The model counts its own predict calls (``batch_probe``)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import (
    ControllerHandle,
    runner_loads,
    serve_status,
    server_call,
    wait_for,
)
from tests.integration.haproxies import haproxy_configs

pytestmark = pytest.mark.integration

PROBE = Path(__file__).parent / "models" / "batch_probe.py"


def register_probe(name: str, *, delay_s: float) -> str:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({"prompt": ["warm"]})
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PROBE),
            signature=infer_signature(
                example, pd.DataFrame({"answer": ["x"], "rows": [1], "call": [1]})
            ),
            input_example=example,
            model_config={"delay_s": delay_s},
            pip_requirements=[],
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def post_all(url: str, bodies: list[Any]) -> list[httpx.Response]:
    """Every body at once, each from its own client connection."""

    def post(body: Any) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            return client.post(url, json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def test_the_stack_answers_through_haproxy(serving_url: str) -> None:
    port = serving_url.rsplit(":", 1)[1]
    configs = haproxy_configs()
    if any(f"bind 127.0.0.1:{port}".encode() in config for config in configs.values()):
        return
    pytest.fail(f"no HAProxy process binds the serving port {port} (found {sorted(configs)})")


def test_concurrent_requests_to_one_version_share_predict_calls_and_keep_their_order(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "batched_probe"
    register_probe(name, delay_s=0.1)
    wait_for(lambda: serve_status(serving_url, name, body={"prompt": "x"}).status_code == 200)

    bodies = [[{"prompt": f"r{i}-a"}, {"prompt": f"r{i}-b"}] for i in range(16)]
    responses = post_all(f"{serving_url}/models/{name}/serve", bodies)

    assert [r.status_code for r in responses] == [200] * 16
    for body, response in zip(bodies, responses, strict=True):
        assert [row["answer"] for row in response.json()] == [r["prompt"] for r in body]
    calls = {row["call"] for r in responses for row in r.json()}
    # Counted by the model: 16 requests, fewer predict calls, some of them with several requests.
    assert len(calls) < 16
    assert max(row["rows"] for r in responses for row in r.json()) > 2


def test_a_failing_record_fails_only_its_own_request(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "failing_probe"
    register_probe(name, delay_s=0.2)
    wait_for(lambda: serve_status(serving_url, name, body={"prompt": "x"}).status_code == 200)

    prompts = [f"p{i}" for i in range(8)]
    prompts[5] = "boom"
    # A request that holds the model for its 0.2 s first, so the eight queue behind it and go
    # as one batch: "boom" arriving first would otherwise be predicted alone (1 run in 8).
    with ThreadPoolExecutor(1) as lead:
        first = lead.submit(serve_status, serving_url, name, None, {"prompt": "lead"})
        time.sleep(0.05)
        responses = post_all(f"{serving_url}/models/{name}/serve",
                             [{"prompt": p} for p in prompts])  # fmt: skip
        assert first.result().status_code == 200

    for prompt, response in zip(prompts, responses, strict=True):
        if prompt == "boom":
            assert response.status_code == 500
            assert response.headers["content-type"].startswith("application/problem+json")
            problem = response.json()
            assert problem["type"] == "urn:sigserve:problem:model-failed"
            assert "ValueError" in problem["detail"] and "'boom'" in problem["detail"]
            assert "Traceback" not in response.text
        else:
            assert response.status_code == 200, response.text
            assert response.json()[0]["answer"] == prompt
    stats = server_call("batch_stats")
    (probe,) = [s for key, s in stats.items() if key.startswith(f"{name}/1@")]
    assert probe["requests"] >= 9 and probe["retried_alone"] >= 2


def test_a_pinned_default_is_loaded_before_its_first_request(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "pinned_probe"
    register_probe(name, delay_s=0.0)
    second = register_probe(name, delay_s=0.0)
    wait_for(lambda: ctl.state_of(name, second) == "live")
    r = httpx.put(
        f"{ctl.url}/admin/models/{name}/default", json={"version": second}, headers=ctl.admin
    )
    assert r.status_code == 200, r.text

    def serving_default() -> str | None:
        answer = httpx.get(f"{serving_url}/models/{name}", timeout=10)
        return answer.json()["default_version"] if answer.status_code == 200 else None

    wait_for(lambda: serving_default() == second)
    # The replica warms the new default when its table arrives, with no request asking for it;
    # the ingress may hold that table a moment before the replica has loaded it.
    wait_for(lambda: any(i.startswith(f"{name}/{second}@") for i in server_call("warmed")))
    loads_before = runner_loads()
    answer = serve_status(serving_url, name, body={"prompt": "first"})
    assert answer.status_code == 200 and answer.json()[0]["answer"] == "first"
    # The first request after the pin found the version loaded: no load on the request path.
    assert runner_loads() == loads_before

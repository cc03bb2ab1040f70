"""Rollouts on the real stack (issue 19): the controller steps a rollout on what the serving
replica counts and reports, and the replica routes the requests that name no version by the
weights the table carries.

- A candidate that answers as the default does is promoted through every step: the default
  moves to it, by the actor ``rollout``.
- A candidate that fails 30% of its requests is rolled back within its first step; clients that
  named no version saw at most the weight's share of those failures, and the default never
  changed.
- A shadow of a candidate that answers differently on one class of inputs reports that
  agreement rate and samples of the disagreements; no client ever got a candidate's answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import ControllerHandle, serve_status, wait_for

FLAKY_MODEL = Path(__file__).parent / "models" / "flaky_echo.py"
VERSION_HEADER = "sigserve-model-version"
CLIENTS = 4


def register_flaky(name: str, *, tag: str, fail_tenths: int = 0, odd_prefix: str = "") -> str:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(FLAKY_MODEL),
            signature=infer_signature(pd.DataFrame({"prompt": ["x"]}),
                                      pd.DataFrame({"answer": ["x"]})),
            model_config={"tag": tag, "fail_tenths": fail_tenths, "odd_prefix": odd_prefix},
            pip_requirements=[],
            registered_model_name=name,
        )  # fmt: skip
    return str(info.registered_model_version)


def rollout(ctl: ControllerHandle, name: str) -> dict[str, Any]:
    r = httpx.get(f"{ctl.url}/admin/models/{name}/rollout", headers=ctl.admin, timeout=10)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def events(ctl: ControllerHandle, name: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{ctl.url}/admin/models/{name}/events", params={"limit": 500},
                  headers=ctl.admin, timeout=10)  # fmt: skip
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["events"]
    return found


def aliases(name: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return dict(MlflowClient().get_registered_model(name).aliases)


def drive(
    serving_url: str, name: str, until: Callable[[], bool], timeout_s: float
) -> list[tuple[int, str | None]]:
    """Requests naming no version from CLIENTS clients, prompts p0, p1, ... in turn, until
    ``until()``: each one's status and the version its answer names."""
    seen: list[tuple[int, str | None]] = []
    done = threading.Event()
    counter = iter(range(10**9))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not done.is_set():
                with lock:
                    n = next(counter)
                r = http.post(f"{serving_url}/models/{name}/serve", json={"prompt": f"p{n}"})
                with lock:
                    seen.append((r.status_code, r.headers.get(VERSION_HEADER)))

    deadline = time.monotonic() + timeout_s
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client) for _ in range(CLIENTS)]
        try:
            while not until():
                assert time.monotonic() < deadline, f"not done within {timeout_s}s"
                time.sleep(0.2)
        finally:
            done.set()
        for future in futures:
            future.result()
    return seen


def test_a_candidate_that_answers_as_the_default_is_promoted_through_every_step(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "rollout_same"
    register_flaky(name, tag="same")
    register_flaky(name, tag="same")
    wait_for(lambda: ctl.state_of(name, "2") == "live")
    wait_for(lambda: serve_status(serving_url, name).status_code == 200)

    # The latency gate is not what this test is about: over 1 s windows of ~100 requests on a
    # shared 2-core machine, a p99 read from buckets (5, 10, 20 ms...) jumps a bucket on noise.
    loose = {"max_p99_ratio": 10, "p99_slack_ms": 200}
    body = {"candidate": "2", "steps": [50, 100], "step_s": 1, "min_requests": 20,
            "thresholds": loose}  # fmt: skip
    r = httpx.post(f"{ctl.url}/admin/models/{name}/rollouts", json=body, headers=ctl.admin)
    assert r.status_code == 201, r.text
    seen = drive(serving_url, name, lambda: rollout(ctl, name)["state"] != "running", 60)

    final = rollout(ctl, name)
    assert final["state"] == "promoted", (final["reason"], final["history"])
    assert {status for status, _ in seen} == {200}
    assert {version for _, version in seen} == {"1", "2"}  # both answered during the steps
    wait_for(lambda: ctl.model(name)["default_version"] == "2")
    wait_for(lambda: serve_status(serving_url, name).headers.get(VERSION_HEADER) == "2")
    # The audit log shows each step, then the promotion, and the pin by the actor `rollout`.
    steps = [e["after"] for e in reversed(events(ctl, name)) if e["kind"] == "rollout"]
    assert [(a["state"], a.get("step")) for a in steps] == [
        ("running", 0), ("running", 1), ("promoted", 1)
    ], steps
    assert steps[1]["gates"] and steps[2]["gates"]
    pins = [e for e in events(ctl, name) if e["actor"] == "rollout" and e["kind"] != "rollout"]
    assert pins, "the promotion is a pin by the actor rollout"
    # MLflow sees it: the default's alias moved to the candidate, whose alias went.
    wait_for(lambda: aliases(name) == {"serving": "2"}, 30)
    print(f"promoted through {len(final['history'])} history entries on {len(seen)} requests")


def test_a_candidate_failing_30_percent_is_rolled_back_within_its_first_step(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "rollout_flaky"
    register_flaky(name, tag="one")
    register_flaky(name, tag="two", fail_tenths=3)
    wait_for(lambda: ctl.state_of(name, "2") == "live")
    wait_for(lambda: serve_status(serving_url, name).status_code == 200)

    weight = 0.2
    # A step held far longer than the test: only its gates can end it.
    body = {"candidate": "2", "steps": [weight * 100, 100], "step_s": 600, "min_requests": 50}
    r = httpx.post(f"{ctl.url}/admin/models/{name}/rollouts", json=body, headers=ctl.admin)
    assert r.status_code == 201, r.text
    seen = drive(serving_url, name, lambda: rollout(ctl, name)["state"] != "running", 60)

    final = rollout(ctl, name)
    assert final["state"] == "rolled-back", (final["reason"], final["history"])
    assert "error" in str(final["reason"]), final["reason"]
    assert final["step"] == 0
    failed = sum(1 for status, _ in seen if status >= 500)
    served_by = [version for status, version in seen if status == 200]
    assert failed > 0 and "2" in served_by  # the candidate took its share
    # Its weight's share of its 30%, with four standard deviations of slack.
    expected = weight * 0.3
    bound = expected + 4 * (expected * (1 - expected) / len(seen)) ** 0.5
    assert failed / len(seen) <= bound, (failed, len(seen))
    print(f"rolled back after {len(seen)} requests, {failed} failed ({failed / len(seen):.1%})")
    # The default never changed; the candidate is still served to whoever names it.
    assert ctl.model(name)["default_version"] == "1"
    wait_for(lambda: serve_status(serving_url, name).headers.get(VERSION_HEADER) == "1")
    named = serve_status(serving_url, name, "2", body={"prompt": "p9"})
    assert named.status_code == 200 and named.json() == [{"answer": "two:p9"}]


def test_a_shadow_reports_the_agreement_and_samples_and_no_client_gets_the_candidate(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "rollout_shadow"
    register_flaky(name, tag="same")
    register_flaky(name, tag="same", odd_prefix="b")
    wait_for(lambda: ctl.state_of(name, "2") == "live")
    wait_for(lambda: serve_status(serving_url, name).status_code == 200)

    # A shadow alone (weight 0), held far longer than the test and never judged within it.
    body = {"candidate": "2", "steps": [0, 100], "shadow": 100, "step_s": 600,
            "min_requests": 10**6}  # fmt: skip
    r = httpx.post(f"{ctl.url}/admin/models/{name}/rollouts", json=body, headers=ctl.admin)
    assert r.status_code == 201, r.text
    # The candidate is loaded on the replica before it takes shadows: wait for a first one.
    wait_for(
        lambda: (
            serve_status(serving_url, name, body={"prompt": "warm"}).status_code == 200
            and (rollout(ctl, name)["totals"] or {}).get("shadow", {}).get("compared", 0) > 0
        )
    )
    before = rollout(ctl, name)["totals"]["shadow"]

    prompts = [f"{'b' if i % 4 == 0 else 'a'}{i}" for i in range(40)]  # a quarter start with b
    with httpx.Client(timeout=30) as http:
        for prompt in prompts:
            answer = http.post(f"{serving_url}/models/{name}/serve", json={"prompt": prompt})
            assert answer.status_code == 200, answer.text
            assert answer.headers[VERSION_HEADER] == "1"
            assert answer.json() == [{"answer": f"same:{prompt}"}]  # never the candidate's

    def shadow() -> dict[str, int]:
        totals: dict[str, int] = rollout(ctl, name)["totals"]["shadow"]
        return totals

    wait_for(lambda: sum(shadow()[k] - before[k] for k in ("compared", "dropped", "failed")) >= 40)
    now = shadow()
    compared = now["compared"] - before["compared"]
    agreed = now["agreed"] - before["agreed"]
    assert now["failed"] == before["failed"]
    assert compared >= 30  # a few may be dropped on a busy machine, never lost
    # Exactly the b-prompts disagree, among those compared.
    # (A shadow of a warm-up request may land after ``before`` was read: it agrees.)
    dropped = now["dropped"] - before["dropped"]
    assert 10 - dropped <= compared - agreed <= 10
    samples = rollout(ctl, name)["disagreements"]
    assert samples and all('"b' in s["input"] for s in samples), samples
    assert all("other:b" in s["candidate"] and "same:b" in s["default"] for s in samples)
    print(f"shadow: {compared} compared, {agreed} agreed; a sample: {samples[-1]}")
    r = httpx.post(f"{ctl.url}/admin/models/{name}/rollout/abort", headers=ctl.admin)
    assert r.status_code == 200, r.text


def test_through_a_controller_outage_the_replica_keeps_the_weights_and_loses_no_count(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "rollout_outage"
    register_flaky(name, tag="same")
    register_flaky(name, tag="same")
    wait_for(lambda: ctl.state_of(name, "2") == "live")
    wait_for(lambda: serve_status(serving_url, name).status_code == 200)
    # Held far longer than the test, never judged within it.
    body = {"candidate": "2", "steps": [50, 100], "step_s": 600, "min_requests": 10**6}
    r = httpx.post(f"{ctl.url}/admin/models/{name}/rollouts", json=body, headers=ctl.admin)
    assert r.status_code == 201, r.text

    def reported() -> int:
        totals = rollout(ctl, name)["totals"] or {}
        return sum(totals.get(side, {}).get("requests", 0) for side in ("candidate", "default"))

    def send(count: int) -> list[str | None]:
        with httpx.Client(timeout=30) as http:
            answers = [http.post(f"{serving_url}/models/{name}/serve", json={"prompt": f"p{i}"})
                       for i in range(count)]  # fmt: skip
        assert {a.status_code for a in answers} == {200}
        return [a.headers.get(VERSION_HEADER) for a in answers]

    # The candidate is loaded on the replica before it takes its share: wait for its first.
    wait_for(lambda: "2" in send(10))
    wait_for(lambda: reported() >= 10)
    before = reported()
    ctl.stop()
    try:
        # No controller: the replica answers from the table it holds, weights included, and its
        # reports fail (sent again each second).
        during = send(100)
        assert {"1", "2"} <= set(during)
        time.sleep(1.5)  # a report or two fails meanwhile
    finally:
        ctl.start()
    # Totals, not deltas: the first report after the outage carries the outage's requests.
    wait_for(lambda: reported() >= before + 100, 30)
    assert rollout(ctl, name)["state"] == "running"
    r = httpx.post(f"{ctl.url}/admin/models/{name}/rollout/abort", headers=ctl.admin)
    assert r.status_code == 200, r.text


def test_weights_hold_over_2000_requests_and_a_routing_key_keeps_one_version(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "rollout_keyed"
    register_flaky(name, tag="one")
    register_flaky(name, tag="two")
    wait_for(lambda: ctl.state_of(name, "2") == "live")
    wait_for(lambda: serve_status(serving_url, name).status_code == 200)
    # One step held far longer than the test, with gates it cannot fail on equal answers.
    body = {"candidate": "2", "steps": [30, 100], "step_s": 600, "min_requests": 10**6}
    r = httpx.post(f"{ctl.url}/admin/models/{name}/rollouts", json=body, headers=ctl.admin)
    assert r.status_code == 201, r.text
    wait_for(lambda: aliases(name).get("candidate") == "2", 30)
    # The replica applies the weight once its table carries the rollout.
    wait_for(lambda: any(serve_status(serving_url, name).headers.get(VERSION_HEADER) == "2"
                         for _ in range(20)), 30)  # fmt: skip

    def versions(headers: dict[str, str], n: int) -> list[str | None]:
        with httpx.Client(timeout=30) as http:
            return [
                http.post(f"{serving_url}/models/{name}/serve", json={"prompt": f"k{i}"},
                          headers=headers).headers.get(VERSION_HEADER)
                for i in range(n)
            ]

    with ThreadPoolExecutor(CLIENTS) as pool:
        random_split = [v for part in pool.map(lambda _: versions({}, 500), range(4))
                        for v in part]  # fmt: skip
    n = len(random_split)
    to_candidate = random_split.count("2")
    assert set(random_split) == {"1", "2"} and n == 2000
    # Five standard deviations of a binomial(2000, 0.3): 0.3 +- 0.051.
    sigma = (0.3 * 0.7 / n) ** 0.5
    assert abs(to_candidate / n - 0.3) <= 5 * sigma, to_candidate
    # Each routing key sees one version through the step; over 40 keys both versions appear.
    seen_by_key: dict[int, str | None] = {}
    for key in range(40):
        seen = set(versions({"sigserve-routing-key": f"caller-{key}"}, 5))
        assert len(seen) == 1, (key, seen)
        seen_by_key[key] = seen.pop()
    assert set(seen_by_key.values()) == {"1", "2"}, seen_by_key
    r = httpx.post(f"{ctl.url}/admin/models/{name}/rollout/abort", headers=ctl.admin)
    assert r.status_code == 200, r.text
    wait_for(lambda: "candidate" not in aliases(name), 30)
    print(f"{to_candidate} of {n} requests to the candidate at weight 0.3; "
          f"{sum(v == '2' for v in seen_by_key.values())} of 40 keys on it")

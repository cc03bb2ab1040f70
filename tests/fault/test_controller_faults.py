"""Controller faults on real processes (issue 8): the controller SIGKILLed mid-reconcile, MLflow
down for a minute, webhook deliveries duplicated, reordered and delayed past their window, the
controller's database locked by another writer.

Each test asserts what a user would check (the admin API, the audit log, what serving answers)
and prints its figures (``[figure]`` lines, repeated at the end of the run): how long the stack
took to converge after the fault.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from controller.faults import KILL_AT_ENV
from controller.registry import WEBHOOK_EVENTS
from sigserve.ports import free_port
from sigserve.processes import ManagedProcess
from sigserve.stack import Secrets, controller, mlflow_server
from tests.fault.conftest import (
    HOST,
    RESYNC_INTERVAL_S,
    Figures,
    MlflowHandle,
    Poller,
    controller_db,
    decision_events,
    reconciled,
    start_controller,
    stored_versions,
)
from tests.integration.conftest import ControllerHandle, register_echo, serve_status, wait_for

PROBLEM_JSON = "application/problem+json"
OUTAGE_S = 60.0
LOCK_S = 10.0


def served_states(url: str, name: str) -> dict[str, str]:
    """What serving's table says of a model's versions (no model is loaded to answer this)."""
    r = httpx.get(f"{url}/models/{name}", timeout=10)
    if r.status_code != 200:
        return {}
    return {v["version"]: v["state"] for v in r.json()["versions"]}


def answer(url: str, name: str, version: str | None = None) -> tuple[int, Any]:
    r = serve_status(url, name, version)
    return r.status_code, r.json()


def decisions(ctl: ControllerHandle) -> dict[str, dict[str, Any]]:
    """Every model's default and each version's decision, as the admin API shows them."""
    listed = httpx.get(f"{ctl.url}/admin/models", headers=ctl.admin, timeout=30).json()
    out: dict[str, dict[str, Any]] = {}
    for m in listed["models"]:
        model = ctl.model(m["name"])
        out[m["name"]] = {
            "default": model["default_version"],
            "contract": model["contract"],
            **{
                v["version"]: (v["state"], v["reasons"], v["decided_at"])
                for v in model["versions"]
            },
        }
    return out


def settled(ctl: ControllerHandle, name: str, default: str) -> None:
    """The controller decided the model and the registry's alias came back to it (its own
    write-back), so a reconcile of it has nothing left to write."""
    wait_for(lambda: ctl.model(name)["alias"]["version"] == default, 60, 0.2)


# 1. The controller SIGKILLed mid-reconcile ----------------------------------------------------


@pytest.mark.parametrize("point", ["in_transaction", "committed"])
def test_controller_killed_mid_reconcile_loses_and_flips_no_decision(
    point: str, serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    name = f"killed_{point}"
    register_echo(name, tag="one")
    register_echo(name, tag="bad", input_label="text")
    wait_for(lambda: ctl.state_of(name, "2") == "quarantined", 60)
    wait_for(lambda: answer(serving_url, name, "1") == (200, [{"answer": "one:hi"}]), 120)
    wait_for(lambda: serve_status(serving_url, name, "2").status_code == 409, 60)
    settled(ctl, name, "1")
    before = decisions(ctl)
    events_before = decision_events(ctl, name)

    ctl.stop()
    armed = start_controller(ctl, {KILL_AT_ENV: f"{point}:{name}"})
    # The armed controller reconciled every model once and lives: nothing of this model was
    # left to write, so the kill below is the reconcile of the new version.
    wait_for(lambda: reconciled(ctl) >= len(before), 60, 0.2)
    assert armed.running()
    v3 = register_echo(name, tag="three")
    registered = time.monotonic()
    wait_for(lambda: not armed.running(), 60, 0.02)
    figures(f"registration -> SIGKILL at {point}", time.monotonic() - registered)
    assert f"SIGKILL at {point}, model {name}" in armed.log_tail(200)

    # What the dead controller left in its database, read with sqlite3.
    stored = stored_versions(ctl, name)
    if point == "in_transaction":
        assert v3 not in stored  # the transaction never committed: rolled back whole
    else:
        # Committed, never published: it passed the checks and waits for its proof, which
        # needs a table that names it.
        assert stored[v3]["state"] == "pending"
    for v in ("1", "2"):
        assert stored[v]["decided_at"] is not None
    # Serving keeps answering the last table it took: the new version is not in it.
    assert answer(serving_url, name) == (200, [{"answer": "one:hi"}])
    assert serve_status(serving_url, name, "2").status_code == 409
    assert serve_status(serving_url, name, v3).status_code == 404

    ctl.stop()  # reaps the killed process
    restarted, restarted_at = time.monotonic(), time.time()
    start_controller(ctl)
    figures("restart -> /readyz?full=true", time.monotonic() - restarted)
    wait_for(lambda: served_states(serving_url, name).get(v3) == "live", 60, 0.05)
    figures("restart -> serving's table has the new version live", time.monotonic() - restarted)
    wait_for(lambda: answer(serving_url, name, v3) == (200, [{"answer": "three:hi"}]), 60, 0.1)
    figures("restart -> the new version answers 200", time.monotonic() - restarted)

    after = decisions(ctl)
    for model, decided in before.items():
        for key, value in decided.items():
            if isinstance(value, tuple) and value[0] == "pending":
                continue  # not a decision yet (another test's version being retried)
            assert after[model][key] == value, (model, key)  # nothing lost, flipped, redone
    assert after[name][v3][0] == "live"
    events = decision_events(ctl, name)
    assert events[: len(events_before)] == events_before
    # One decision to prove it (the killed process's when it committed, not made again), then
    # live on its proof: nothing decided twice, nothing live unproven.
    new_events = events[len(events_before):]
    assert [(e["version"], e["after"]["state"]) for e in new_events] == [
        (v3, "pending"),
        (v3, "live"),
    ]
    if point == "committed":
        assert datetime.fromisoformat(new_events[0]["at"]).timestamp() < restarted_at
    assert answer(serving_url, name) == (200, [{"answer": "one:hi"}])  # the default held
    assert serve_status(serving_url, name, "2").status_code == 409
    with sqlite3.connect(controller_db(ctl)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# 2. MLflow down for a minute ------------------------------------------------------------------


@contextmanager
def paused(process: ManagedProcess) -> Iterator[None]:
    """SIGSTOP the process for the block (no resync, no reconcile can run), then SIGCONT."""
    assert process.pid is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


def decided_at(ctl: ControllerHandle, name: str, version: str) -> tuple[float, str]:
    """When (epoch seconds) and by whom a version's first decision was made: the audit log."""
    first = next(e for e in decision_events(ctl, name) if e["version"] == version)
    return datetime.fromisoformat(first["at"]).timestamp(), str(first["actor"])


def test_mlflow_down_for_a_minute_serving_answers_and_the_registry_converges_after(
    serving_url: str, ctl: ControllerHandle, mlflow_up: MlflowHandle, figures: Figures
) -> None:
    name = "outage_echo"
    register_echo(name, tag="one")
    register_echo(name, tag="two")
    wait_for(lambda: answer(serving_url, name) == (200, [{"answer": "one:hi"}]), 120)
    wait_for(lambda: answer(serving_url, name, "2") == (200, [{"answer": "two:hi"}]), 120)
    settled(ctl, name, "1")
    client = MlflowClient(mlflow_up.uri)
    hook = next(h for h in client.list_webhooks() if h.url == ctl.webhook_url)
    assert ctl._process is not None

    # A version whose webhook is lost as MLflow goes down: the webhook is off when it is
    # registered, and the controller is paused until MLflow is gone, so neither its delivery
    # nor a resync reaches the controller before the outage.
    client.update_webhook(hook.webhook_id, status="DISABLED")
    try:
        time.sleep(1.5)  # the server's webhook cache TTL is 1 s in this stack
        with paused(ctl._process):
            v3 = register_echo(name, tag="three")
            mlflow_up.stop()
        down = time.monotonic()

        serve_default = Poller(lambda: serve_status(serving_url, name))
        serve_v2 = Poller(lambda: serve_status(serving_url, name, "2"))
        ready = Poller(lambda: httpx.get(f"{ctl.url}/readyz", timeout=10))
        with serve_default, serve_v2, ready:
            time.sleep(OUTAGE_S / 2)
            full = httpx.get(f"{ctl.url}/readyz", params={"full": "true"}, timeout=10)
            assert full.status_code == 503 and full.headers["retry-after"]
            assert full.json()["checks"]["registry"].startswith("unreachable")
            assert full.json()["checks"]["routing_table"] == "ok"
            assert ctl.state_of(name, v3) is None  # the controller cannot know of it yet
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
            mlflow_up.start()  # the same store and port
            back, back_wall = time.monotonic(), time.time()
            client = MlflowClient(mlflow_up.uri)
            client.update_webhook(hook.webhook_id, status="ACTIVE")
            wait_for(lambda: httpx.get(f"{ctl.url}/readyz", params={"full": "true"}
                                       ).status_code == 200, 60, 0.1)
            figures("MLflow back -> /readyz?full=true 200", time.monotonic() - back)
        figures("MLflow down (stop -> healthy again)", back - down)
        for poller, what in ((serve_default, "default"), (serve_v2, "version 2")):
            figures(f"serving {what}, every 0.5 s through the outage",
                    str(dict(poller.statuses)), "answers")
            figures(f"serving {what}, slowest answer", poller.slowest)
            assert set(poller.statuses) == {200}, poller.statuses
            assert sum(poller.statuses.values()) >= OUTAGE_S / 0.5 * 0.9
        figures("controller /readyz through the outage", str(dict(ready.statuses)), "answers")
        assert set(ready.statuses) == {200}, ready.statuses
    finally:
        if not mlflow_up.running:  # the test failed during the outage
            mlflow_up.start()
        MlflowClient(mlflow_up.uri).update_webhook(hook.webhook_id, status="ACTIVE")

    # Registered right after the return (nothing can be registered while MLflow is down), to
    # another model: a delivery for this one would decide the lost version too, and that is
    # the resync's to prove.
    after = "outage_after"
    time.sleep(1.5)  # the webhook is on again: past the server's 1 s cache
    started = time.time()
    register_echo(after, tag="after")
    took = time.time() - started
    wait_for(lambda: ctl.state_of(after, "1") == "live", 2 * RESYNC_INTERVAL_S + 5, 0.05)
    at, _ = decided_at(ctl, after, "1")
    figures("registration after the return (log_model) took", took)
    figures("registration after the return started -> decided live", at - started)
    assert at - started <= took + 2 * RESYNC_INTERVAL_S

    wait_for(lambda: ctl.state_of(name, v3) == "live", 2 * RESYNC_INTERVAL_S + 5, 0.05)
    at, actor = decided_at(ctl, name, v3)
    figures("MLflow back -> the lost webhook's version decided live", at - back_wall)
    assert at - back_wall <= 2 * RESYNC_INTERVAL_S + 1.0
    assert actor in ("resync", "retry"), actor  # made up by the resync, not by a delivery
    wait_for(lambda: answer(serving_url, name, v3) == (200, [{"answer": "three:hi"}]), 60, 0.1)
    wait_for(lambda: answer(serving_url, after) == (200, [{"answer": "after:hi"}]), 60, 0.1)
    figures("MLflow back -> both new versions answer 200", time.monotonic() - back)


HUNG_S = 20.0


def test_mlflow_hung_readiness_and_the_admin_api_answer_at_once(
    serving_url: str, ctl: ControllerHandle, mlflow_up: MlflowHandle, figures: Figures
) -> None:
    """MLflow that takes connections and answers nothing (SIGSTOPped) for longer than the
    registry client's 15 s timeout: /readyz must stay fast (a probe that times out takes the
    controller out of its Service), the admin API too, and serving answers."""
    name = "hung_echo"
    register_echo(name, tag="one")
    wait_for(lambda: answer(serving_url, name) == (200, [{"answer": "one:hi"}]), 120)
    settled(ctl, name, "1")

    ready = Poller(lambda: httpx.get(f"{ctl.url}/readyz", timeout=30))
    admin = Poller(lambda: httpx.get(f"{ctl.url}/admin/models/{name}", headers=ctl.admin,
                                     timeout=30))
    serving = Poller(lambda: serve_status(serving_url, name))
    mlflow_up.pause()
    hung = time.monotonic()
    try:
        with ready, admin, serving:
            time.sleep(HUNG_S)
            full = httpx.get(f"{ctl.url}/readyz", params={"full": "true"}, timeout=30)
            assert full.status_code == 503
            assert full.json()["checks"]["registry"].startswith("unreachable")
    finally:
        mlflow_up.resume()
    resumed = time.monotonic()
    figures("MLflow hung", resumed - hung)
    for poller, what in ((ready, "/readyz"), (admin, "admin GET"), (serving, "serving")):
        figures(f"{what} while MLflow hung", str(dict(poller.statuses)), "answers")
        figures(f"{what} slowest answer while MLflow hung", poller.slowest)
        assert set(poller.statuses) == {200}, poller.statuses
    assert ready.slowest < 1.0  # Kubernetes' default probe timeout
    assert admin.slowest < 2.0
    wait_for(lambda: httpx.get(f"{ctl.url}/readyz", params={"full": "true"},
                               timeout=30).status_code == 200, 60, 0.2)
    figures("MLflow resumed -> /readyz?full=true 200", time.monotonic() - resumed)
    v2 = register_echo(name, tag="two")
    wait_for(lambda: answer(serving_url, name, v2) == (200, [{"answer": "two:hi"}]), 60, 0.1)


# 3. Webhook deliveries duplicated, reordered, delayed past the window ------------------------


class Capture:
    """An HTTP endpoint that keeps every delivery MLflow sends it (headers and raw body)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}/capture"
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        capture = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                capture.deliveries.append((headers, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((HOST, self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Capture:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def replay(url: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    keep = ("content-type", "x-mlflow-delivery-id", "x-mlflow-timestamp", "x-mlflow-signature")
    sent = {k: v for k, v in headers.items() if k in keep}
    return httpx.post(f"{url}/webhooks/mlflow", content=body, headers=sent, timeout=30)


def webhook_counts(url: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("sigserve_webhooks_total{"):
            result = line.split('result="')[1].split('"')[0]
            counts[result] = float(line.split()[-1])
    return counts


@contextmanager
def registering_to(uri: str) -> Iterator[None]:
    """``register_echo`` into another MLflow for the block; the session's is left as it was
    (``set_tracking_uri`` also sets, or with None unsets, MLFLOW_TRACKING_URI)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)  # type: ignore[arg-type]
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


def view(url: str, admin: dict[str, str], name: str) -> dict[str, Any]:
    """A model's default, contract and decisions; empty while the controller does not know it."""
    r = httpx.get(f"{url}/admin/models/{name}", headers=admin, timeout=30)
    if r.status_code == 404:
        return {"versions": {}}
    r.raise_for_status()
    model = r.json()
    return {
        "default": model["default_version"],
        "contract": model["contract"],
        "versions": {v["version"]: (v["state"], v["reasons"]) for v in model["versions"]},
    }


def test_webhooks_duplicated_reordered_and_stale_are_decided_once_converge_and_are_refused(
    home: Path, secrets: Secrets, figures: Figures, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real deliveries, signed by MLflow, captured and replayed to controllers that hear of the
    registry only through them (no webhook of their own, no resync within the test).

    MLflow and the two controllers here are this test's own (a registry of their own), so
    their write-back touches none of the session's models. No serving app takes their tables,
    so nothing would prove a version: they decide with proofs off (SIGSERVE_DEFAULT_PROOF),
    live as soon as the checks pass, which is what this test compares.
    """
    monkeypatch.setenv("SIGSERVE_DEFAULT_PROOF", "off")
    own = home / "replay"
    port = free_port()
    uri = f"http://{HOST}:{port}"
    registry = mlflow_server(own, host=HOST, port=port,
                             encryption_key=secrets.mlflow_encryption_key).start()
    started: list[ManagedProcess] = [registry]
    try:
        registry.wait_healthy(180)
        client = MlflowClient(uri)

        def a_controller(label: str) -> tuple[ManagedProcess, str]:
            port = free_port()
            process = controller(
                own, host=HOST, port=port, tracking_uri=uri, admin_token=secrets.admin_token,
                webhook_secret=secrets.webhook_secret, resync_interval_s=3600,
                database_url=f"sqlite:///{own / f'{label}.db'}", register_webhook=False,
                log_name=f"controller-{label}.log",
            ).start()  # fmt: skip
            started.append(process)
            process.wait_healthy(120)
            return process, f"http://{HOST}:{port}"

        _, in_order = a_controller("in-order")
        _, shuffled = a_controller("shuffled")
        admin = {"Authorization": f"Bearer {secrets.admin_token}"}
        name = "replayed_echo"
        with Capture() as capture:
            client.create_webhook(name="fault-capture", url=capture.url,
                                  events=list(WEBHOOK_EVENTS), secret=secrets.webhook_secret)
            time.sleep(1.5)  # the server's webhook cache TTL
            with registering_to(uri):
                register_echo(name, tag="one")
                register_echo(name, tag="bad", input_label="text")
                register_echo(name, tag="three")
            # One registered_model.created and three model_version.created.
            wait_for(lambda: len(capture.deliveries) >= 4, 30, 0.1)
            time.sleep(1.0)
            captured = list(capture.deliveries)
            figures("deliveries captured", len(captured), "")
            for headers, _ in captured:
                assert headers["x-mlflow-signature"].startswith("v1,")  # MLflow signed them

            # In order, then every delivery again: each duplicate is answered as one.
            t0 = time.monotonic()
            first = [replay(in_order, h, b).json()["status"] for h, b in captured]
            again = [replay(in_order, h, b).json()["status"] for h, b in captured]
            assert first == ["accepted"] * len(captured)
            assert again == ["duplicate"] * len(captured)
            wait_for(lambda: view(in_order, admin, name)["versions"].get("3", ("",))[0]
                     == "live", 30, 0.05)
            figures("in order, each sent twice: first delivery -> every version decided",
                    time.monotonic() - t0)

            # Reversed and shuffled, each delivery sent twice, the duplicate not next to it.
            rng = random.Random(8)
            order = list(reversed(captured)) + rng.sample(captured, len(captured))
            t0 = time.monotonic()
            statuses = [replay(shuffled, h, b).json()["status"] for h, b in order]
            assert statuses == ["accepted"] * len(captured) + ["duplicate"] * len(captured)
            wait_for(lambda: view(shuffled, admin, name) == view(in_order, admin, name),
                     30, 0.05)
            figures("reordered: first delivery -> the same state as in order",
                    time.monotonic() - t0)
            converged = view(shuffled, admin, name)
            assert converged["default"] == "1"
            assert {v: s for v, (s, _) in converged["versions"].items()} == {
                "1": "live", "2": "quarantined", "3": "live"}
            assert any("'prompt'" in r for r in converged["versions"]["2"][1])
            for url in (in_order, shuffled):
                events = httpx.get(f"{url}/admin/models/{name}/events",
                                   params={"limit": 500}, headers=admin).json()["events"]
                decided = sorted(e["version"] for e in events if e["kind"] == "decision")
                assert decided == ["1", "2", "3"]  # one decision per version, not per delivery

            # Delayed past the window: the same delivery signed exactly as MLflow signs, with a
            # timestamp older than SIGSERVE_WEBHOOK_MAX_AGE_S (300 s), for a model this
            # controller has not heard of.
            late = "late_echo"
            with registering_to(uri):
                register_echo(late, tag="one")
            wait_for(lambda: any(json.loads(b)["data"].get("name") == late
                                 for _, b in capture.deliveries[len(captured):]), 30, 0.1)
            headers, body = next(
                (h, b) for h, b in capture.deliveries[len(captured):]
                if json.loads(b)["entity"] == "registered_model"
                and json.loads(b)["data"]["name"] == late
            )
            client.delete_webhook(
                next(h.webhook_id for h in client.list_webhooks() if h.name == "fault-capture")
            )
        from mlflow.webhooks.delivery import _generate_hmac_signature

        delivery_id = headers["x-mlflow-delivery-id"]
        stale_ts = str(int(time.time()) - 301)
        stale = {**headers, "x-mlflow-timestamp": stale_ts,
                 "x-mlflow-signature": _generate_hmac_signature(
                     secrets.webhook_secret, delivery_id, stale_ts, body.decode())}
        rejected_before = webhook_counts(shuffled).get("rejected", 0.0)
        refused = replay(shuffled, stale, body)
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith(PROBLEM_JSON)
        assert webhook_counts(shuffled)["rejected"] == rejected_before + 1
        time.sleep(1.0)  # were it enqueued, it would be decided by now
        nothing = httpx.get(f"{shuffled}/admin/models/{late}", headers=admin)
        assert nothing.status_code == 404  # not enqueued, not reconciled
        # No event either: a model with none, never stored, is unknown to the audit log (404).
        events = httpx.get(f"{shuffled}/admin/models/{late}/events", headers=admin)
        assert events.status_code == 404, events.text
        # Its delivery id was not recorded: MLflow's own (fresh) delivery is taken.
        taken = replay(shuffled, headers, body)
        assert taken.json() == {"status": "accepted", "delivery_id": delivery_id}
        wait_for(lambda: view(shuffled, admin, late)["versions"].get("1", ("",))[0] == "live",
                 30, 0.05)
    finally:
        for process in reversed(started):
            process.stop()


# 4. The controller's database locked by another writer ---------------------------------------


def timed(method: str, url: str, **kwargs: Any) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    r = httpx.request(method, url, timeout=120, **kwargs)
    return time.monotonic() - started, r


def check_clean(r: httpx.Response) -> None:
    """An admin write under a lock: done (200), or a clean refusal (503 problem+json with
    Retry-After); never a 500."""
    assert r.status_code in (200, 503), r.text
    if r.status_code == 503:
        assert r.headers["content-type"].startswith(PROBLEM_JSON)
        assert int(r.headers["retry-after"]) >= 1


def lock_scenario(
    serving_url: str, ctl: ControllerHandle, figures: Figures, name: str
) -> dict[str, tuple[float, httpx.Response]]:
    """Hold ``BEGIN EXCLUSIVE`` on the controller's database for LOCK_S while an admin pins v2,
    another quarantines v1 and v3 is registered; check serving, readiness and what was written.
    """
    register_echo(name, tag="one")
    register_echo(name, tag="two")
    wait_for(lambda: ctl.state_of(name, "2") == "live", 60)
    wait_for(lambda: answer(serving_url, name) == (200, [{"answer": "one:hi"}]), 120)
    settled(ctl, name, "1")
    before = ctl.model(name)
    v2_signature = before["contract"]  # v2 keeps v1's signature
    base = f"{ctl.url}/admin/models/{name}"

    db = sqlite3.connect(controller_db(ctl), isolation_level=None, timeout=30)
    db.execute("BEGIN EXCLUSIVE")
    locked = time.monotonic()
    serving = Poller(lambda: serve_status(serving_url, name))
    ready = Poller(lambda: httpx.get(f"{ctl.url}/readyz", timeout=30))
    try:
        with serving, ready, ThreadPoolExecutor(3) as pool:
            pin: Future[tuple[float, httpx.Response]] = pool.submit(
                timed, "PUT", f"{base}/default", json={"version": "2"}, headers=ctl.admin)
            quarantine: Future[tuple[float, httpx.Response]] = pool.submit(
                timed, "POST", f"{base}/versions/1/quarantine",
                json={"reason": "held under a lock"}, headers=ctl.admin)
            v3: Future[str] = pool.submit(register_echo, name, tag="three")
            time.sleep(2.0)
            # Reads go on under the lock (WAL); nothing of either change shows.
            during = ctl.model(name)
            assert during["default_version"] == "1"
            assert {v["version"]: v["override"] for v in during["versions"]}["1"] is None
            time.sleep(max(0.0, LOCK_S - (time.monotonic() - locked)))
            db.execute("ROLLBACK")
            released = time.monotonic()
            figures("lock held", released - locked)
            results = {"pin": pin.result(), "quarantine": quarantine.result()}
            registered_v3 = v3.result()
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()
    for what, (took, r) in results.items():
        figures(f"{what}: status {r.status_code}, answered after", took)
        check_clean(r)
    figures("serving during the lock", str(dict(serving.statuses)), "answers")
    figures("controller /readyz during the lock", str(dict(ready.statuses)), "answers")
    figures("controller /readyz slowest answer during the lock", ready.slowest)
    assert set(serving.statuses) == {200}, serving.statuses
    assert set(ready.statuses) == {200}, ready.statuses

    # Each change is there whole, or not at all.
    after = ctl.model(name)
    pin_r, quarantine_r = results["pin"][1], results["quarantine"][1]
    if pin_r.status_code == 200:
        assert after["default_version"] == "2" and after["contract"] == v2_signature
    else:
        assert after["default_version"] == "1" and after["contract"] == before["contract"]
    v1 = next(v for v in after["versions"] if v["version"] == "1")
    if quarantine_r.status_code == 200:
        assert v1["state"] == "quarantined" and v1["override"]["reason"] == "held under a lock"
    else:
        assert v1["state"] == "live" and v1["override"] is None
    events = httpx.get(f"{base}/events", params={"limit": 500}, headers=ctl.admin).json()
    overrides = [e for e in events["events"] if e["kind"] == "override"]
    assert len(overrides) == (1 if quarantine_r.status_code == 200 else 0)

    # Reconciles resume after the lock: the version registered under it is decided.
    wait_for(lambda: ctl.state_of(name, registered_v3) == "live", 2 * RESYNC_INTERVAL_S + 5, 0.05)
    figures("lock released -> the version registered under it decided",
            time.monotonic() - released)
    return results


def test_database_locked_for_10s_admin_writes_wait_and_reconciles_resume(
    serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    results = lock_scenario(serving_url, ctl, figures, "locked_echo")
    # The busy timeout (30 s by default) outlasts this lock: both writes waited and were made.
    for took, r in results.values():
        assert r.status_code == 200, r.text
        assert LOCK_S - 3.0 <= took <= LOCK_S + 10.0
    assert results["pin"][1].json()["default_version"] == "2"
    wait_for(lambda: answer(serving_url, "locked_echo") == (200, [{"answer": "two:hi"}]), 60, 0.1)


def test_database_locked_past_the_busy_timeout_is_a_clean_503_never_half_written(
    serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    ctl.stop()
    start_controller(ctl, {"SIGSERVE_DATABASE_BUSY_TIMEOUT_S": "2"})
    try:
        name = "overlocked_echo"
        results = lock_scenario(serving_url, ctl, figures, name)
        # Whatever waited past 2 s for the lock was refused cleanly; at least one did.
        assert any(r.status_code == 503 for _, r in results.values())
        # Sent again after the lock, the refused calls are made.
        base = f"{ctl.url}/admin/models/{name}"
        pin = httpx.put(f"{base}/default", json={"version": "2"}, headers=ctl.admin, timeout=30)
        assert pin.status_code == 200 and pin.json()["default_version"] == "2"
        if results["quarantine"][1].status_code == 503:
            q = httpx.post(f"{base}/versions/1/quarantine", json={"reason": "again"},
                           headers=ctl.admin, timeout=30)
            assert q.status_code == 200
        assert ctl.state_of(name, "1") == "quarantined"
        wait_for(lambda: answer(serving_url, name) == (200, [{"answer": "two:hi"}]), 60, 0.1)
    finally:
        ctl.stop()
        ctl.start()

"""What an operator sees after the notebook's scenario: both metric endpoints, and the logs.

The scenario, on the session's real stack (MLflow, the controller, Ray Serve): a model's first
version becomes the default and answers, a second answers by header and by path, a third whose
input is renamed is quarantined (409), a fourth loads and evicts an older one from the replica's
LRU (two models per replica), a throwaway model deleted from MLflow makes the registry
answer "gone", and requests to it and to models never registered are 404. Then

- the controller's ``/metrics`` and serving's (Ray's metrics port) are scraped and each metric
  of ``docs/operations.md`` is found with the labels and counts the scenario implies: decisions
  as many as the audit log's decision events, versions per state as serving lists them,
  requests per model/version/status as sent (those to unknown models under model ""),
  loads, evictions, batch records, revisions;
- from the logs of one registration (the fourth version), its webhook's delivery id is
  followed to its decision, the revision that carried it, and the replica that took that
  revision: the controller's JSON log and the replica's own file in Ray's session logs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sigserve.stack import ray_temp_dir
from tests.integration.conftest import ControllerHandle, register_echo, serve_status, wait_for

NAME = "obs_translation"
GONE = "obs_gone"
ABSENT = ("obs_never_registered_a", "obs_never_registered_b")  # models no table holds
# Long enough for a count to reach serving's /metrics: each replica flushes every second, and
# Ray reports to its agent every 10 s (metrics_report_interval_ms).
EXPORT_LAG_S = 15.0
Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=10).text
    return [(s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples with ``labels`` (a label absent is "", as in Prometheus)."""
    return sum(v for n, found, v in samples
               if n == name and all(found.get(k, "") == want for k, want in labels.items()))


def serving_metrics_url() -> str:
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]  # start_serving's Ray, in this process
    return f"http://127.0.0.1:{port}/metrics"


def unknown_model_requests(url: str) -> float:
    """Inference requests to models the table lacks: labelled model "", whatever name was sent."""
    return total(scrape(url), "ray_sigserve_requests_total", model="")


class Settling:
    """A count read now and again until it stops moving: what earlier tests sent has arrived.

    Serving's counts reach ``/metrics`` seconds late, so a count read right after other tests'
    requests may still grow by them; one unchanged for ``EXPORT_LAG_S`` has taken them all.
    """

    def __init__(self, read: Callable[[], float]) -> None:
        self._read = read
        self.value = read()
        self._since = time.monotonic()

    def settled(self, timeout_s: float = 90.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = self._read()
            if now != self.value:
                self.value, self._since = now, time.monotonic()
            elif time.monotonic() - self._since >= EXPORT_LAG_S:
                return now
            time.sleep(1.0)
        raise AssertionError(f"still moving after {timeout_s} s (last: {self.value})")


def listing(serving_url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{serving_url}/models", timeout=10).json()
    return body


def states(serving_url: str, name: str) -> dict[str, str]:
    r = httpx.get(f"{serving_url}/models/{name}", timeout=10)
    return {v["version"]: v["state"] for v in r.json().get("versions", [])} if r.is_success else {}


def awaiting_proof(ctl: ControllerHandle) -> list[str]:
    """Versions the controller's table says are waiting for a replica's proof."""
    token = {"Authorization": f"Bearer {ctl.secrets.serving_token}"}
    table = httpx.get(f"{ctl.url}/routing-table", headers=token, timeout=10).json()
    return [f"{name}/{v}" for name, model in table["models"].items()
            for v, entry in model["versions"].items() if entry.get("awaiting_proof")]


def decision_events(ctl: ControllerHandle, name: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{ctl.url}/admin/models/{name}/events", params={"limit": 500},
                  headers=ctl.admin, timeout=10)
    r.raise_for_status()
    return [e for e in r.json()["events"] if e["kind"] == "decision" and e["after"]]


@pytest.fixture(scope="module")
def scenario(serving_url: str, controller_handle: ControllerHandle) -> dict[str, Any]:
    ctl = controller_handle
    # Versions earlier tests registered are decided again when a replica reports their proof:
    # those decisions settle first, so every one counted below is this scenario's.
    wait_for(lambda: not awaiting_proof(ctl), 60, 0.2)
    before = scrape(f"{ctl.url}/metrics")
    # None of the scenario's requests below names a model the table lacks: this count settles
    # while the scenario runs, and the requests sent at its end are then all it grows by.
    unknown = Settling(lambda: unknown_model_requests(serving_metrics_url()))
    v1 = register_echo(NAME, tag="de")
    v2 = register_echo(NAME, tag="fr")
    v3 = register_echo(NAME, tag="renamed", input_label="text_to_translate")
    # Waiting on the listing, not on inference: every inference request below is counted.
    wait_for(lambda: states(serving_url, NAME) == {v1: "live", v2: "live", v3: "quarantined"},
             60)
    sent = {
        (v1, 200): [serve_status(serving_url, NAME) for _ in range(4)],
        (v2, 200): [serve_status(serving_url, NAME, headers={"serve_multiplexed_model_id": v2})
                    for _ in range(2)]
        + [serve_status(serving_url, NAME, v2, body=[{"prompt": p} for p in "abc"])],
        (v3, 409): [serve_status(serving_url, NAME, v3) for _ in range(3)],
        (v1, 422): [serve_status(serving_url, NAME, body={"text_to_translate": "x"})
                    for _ in range(2)],
        ("", 404): [serve_status(serving_url, NAME, "99")],
    }
    for (_, status), responses in sent.items():
        assert [r.status_code for r in responses] == [status] * len(responses)
    # A fourth version: loading it evicts one of the two the replica holds.
    v4 = register_echo(NAME, tag="it")
    wait_for(lambda: states(serving_url, NAME).get(v4) == "live", 60)
    sent[(v4, 200)] = [serve_status(serving_url, NAME, v4) for _ in range(2)]
    assert [r.status_code for r in sent[(v4, 200)]] == [200, 200]
    # A model deleted from MLflow: the next resync asks for it and the registry says "gone".
    register_echo(GONE, tag="x")
    wait_for(lambda: states(serving_url, GONE).get("1") == "live", 60)
    # Its decisions, read while the admin API still has them (a deleted model's are not shown).
    decisions = decision_events(ctl, GONE)
    from mlflow import MlflowClient
    from mlflow.exceptions import RestException

    def deleted() -> bool:
        # MLflow's SQLite store can fail a delete with a foreign-key error while the
        # controller writes the version's verdict tags or alias: asked again, it deletes.
        try:
            MlflowClient().delete_registered_model(GONE)
        except RestException as exc:
            if "FOREIGN KEY" not in str(exc):
                raise
            return False
        return True

    wait_for(deleted, 30, 0.5)
    wait_for(lambda: GONE not in {m["name"] for m in listing(serving_url)["models"]}, 30)
    # Requests to models no table holds (GONE's included, now): 404, and counted under "".
    unknown_before = unknown.settled()
    absent = [serve_status(serving_url, name) for name in (*ABSENT, ABSENT[0], GONE)]
    assert [r.status_code for r in absent] == [404] * len(absent)
    return {"before": before, "versions": (v1, v2, v3, v4), "sent": sent,
            "gone_decisions": decisions, "unknown_before": unknown_before,
            "unknown_sent": len(absent)}


def test_the_controllers_metrics_count_the_scenario(
    scenario: dict[str, Any], ctl: ControllerHandle, serving_url: str
) -> None:
    before: Samples = scenario["before"]
    after = scrape(f"{ctl.url}/metrics")

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    # Webhooks: one model_version.created per version at least, all accepted.
    assert delta("sigserve_webhooks_total", result="accepted") >= 5
    assert delta("sigserve_webhooks_total", result="rejected") == 0
    assert delta("sigserve_reconcile_seconds_count") >= 5
    assert delta("sigserve_reconciles_total", result="ok") >= 5
    # Decisions: exactly the audit log's decision events of the scenario's models, by state
    # (every model here has the default policy, backward).
    expected: dict[str, int] = {}
    for event in decision_events(ctl, NAME) + scenario["gone_decisions"]:
        expected[event["after"]["state"]] = expected.get(event["after"]["state"], 0) + 1
    for state in ("live", "quarantined", "pending"):
        assert delta("sigserve_decisions_total", state=state, policy="backward") == (
            expected.get(state, 0)), state
        assert delta("sigserve_decisions_total", state=state, policy="exact") == 0
    assert expected["live"] == 4 and expected["quarantined"] == 1
    # Versions by state and the revision: what serving lists from the same table.
    table = listing(serving_url)
    assert total(after, "sigserve_routing_table_revision") == table["revision"]
    for state in ("live", "quarantined", "pending"):
        listed = sum(v["state"] == state for m in table["models"] for v in m["versions"])
        assert total(after, "sigserve_model_versions", state=state) == listed, state
    # Publishes timed: every revision the scenario made was a publish (a publish may carry
    # several decisions, so there can be fewer than decisions); four versions went live, each
    # once, within a minute of registering.
    revisions = delta("sigserve_routing_table_revision")
    assert delta("sigserve_publish_seconds_count") >= revisions >= 3
    assert delta("sigserve_registration_to_live_seconds_count") == 4
    assert 0 < delta("sigserve_registration_to_live_seconds_sum") < 4 * 60
    # The registry's "gone" for the deleted model; every kind is exported.
    assert delta("sigserve_registry_errors_total", kind="gone") >= 1
    for kind in ("temporary", "permanent"):
        assert any(n == "sigserve_registry_errors_total" and labels.get("kind") == kind
                   for n, labels, _ in after)
    assert total(after, "sigserve_controller_leader") == 1


def test_the_serving_replicas_metrics_count_the_scenario(
    scenario: dict[str, Any], serving_url: str
) -> None:
    v1, v2, v3, v4 = scenario["versions"]
    sent: dict[tuple[str, int], list[httpx.Response]] = scenario["sent"]
    url = serving_metrics_url()
    # What the scenario sent, as Prometheus should count it (labels: model, version, ...).
    expected: dict[tuple[str, ...], float] = {
        ("ray_sigserve_requests_total", v, str(status)): len(responses)
        for (v, status), responses in sent.items()
    }
    expected.update({
        # Latency of every request to the model, by version (the 422s ran on the default).
        ("ray_sigserve_request_seconds_count", v1): 6,
        ("ray_sigserve_request_seconds_count", v3): 3,
        # Loads: v1 proven as the default (which warms it), v2 and v4 each once for its proof
        # (beside the LRU, let go after) and once on demand; v3 never (quarantined).
        ("ray_sigserve_model_loads_total", v1, "ok"): 1,
        ("ray_sigserve_model_loads_total", v2, "ok"): 2,
        ("ray_sigserve_model_loads_total", v4, "ok"): 2,
        ("ray_sigserve_model_loads_total", v3, "ok"): 0,
        ("ray_sigserve_model_load_seconds_count", v1): 1,
        ("ray_sigserve_model_load_seconds_count", v4): 2,
        # Predict calls (one per request, sent one after another) and their records:
        # v1's four single records, v2's 1 + 1 + 3.
        ("ray_sigserve_batch_size_count", v1): 4,
        ("ray_sigserve_batch_size_sum", v1): 4,
        ("ray_sigserve_batch_size_count", v2): 3,
        ("ray_sigserve_batch_size_sum", v2): 5,
    })  # fmt: skip
    keys = {"ray_sigserve_requests_total": ("version", "status"),
            "ray_sigserve_model_loads_total": ("version", "result")}

    def counted() -> dict[tuple[str, ...], float]:
        samples = scrape(url)
        return {key: total(samples, key[0], model=NAME,
                           **dict(zip(keys.get(key[0], ("version",)), key[1:], strict=True)))
                for key in expected}

    # Flushed each second, exported by Ray's agent every few seconds: wait for all of it.
    last: list[dict[tuple[str, ...], float]] = []

    def arrived() -> bool:
        last[:] = [counted()]
        return last[0] == expected

    try:
        wait_for(arrived, 60, 1.0)
    except AssertionError:
        assert last[0] == expected  # shows what differs
    samples = scrape(url)

    def seen(name: str, **labels: str) -> float:
        return total(samples, name, model=NAME, **labels)

    assert 0 < seen("ray_sigserve_request_seconds_sum", version=v2) < 30
    # Batch sizes by bucket: v2's two calls of one record, then one of three.
    assert seen("ray_sigserve_batch_size_bucket", version=v2, le="1.0") == 2
    assert seen("ray_sigserve_batch_size_bucket", version=v2, le="4.0") == 3
    # Two models per replica: loading v4 evicted v1 or v2.
    evicted = [seen("ray_sigserve_model_evictions_total", version=v) for v in (v1, v2)]
    assert sum(evicted) >= 1
    # A model the table lacks is labelled "" (not a label per name a client sends): the
    # scenario's requests to such models, each counted once, none under the name it sent.
    want = scenario["unknown_before"] + scenario["unknown_sent"]
    wait_for(lambda: unknown_model_requests(url) == want, 60, 1.0)
    assert unknown_model_requests(url) == want  # and no more arrived
    assert not [labels for n, labels, _ in scrape(url)
                if n == "ray_sigserve_requests_total" and labels.get("model") in {*ABSENT, GONE}]
    # The table held: the revision serving answers from, and how long ago it was taken.
    revision = listing(serving_url)["revision"]
    wait_for(lambda: total(scrape(url), "ray_sigserve_replica_table_revision") == revision,
             30, 1.0)
    ages = [v for n, _, v in scrape(url) if n == "ray_sigserve_replica_table_age_seconds"]
    assert len(ages) == 1 and 0 <= ages[0] < 600


def json_lines(path: Path) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def test_one_registration_is_followed_from_its_delivery_id_to_the_replica(
    scenario: dict[str, Any], ctl: ControllerHandle, home: Path, serving_url: str
) -> None:
    v4 = scenario["versions"][3]
    controller = json_lines(ctl.home / "logs" / "controller.log")
    assert controller and all(r["service"] == "controller" for r in controller)
    # 1. The webhook MLflow sent when v4 was registered: its delivery id.
    [webhook] = [r for r in controller if r.get("event") == "webhook" and r.get("model") == NAME
                 and r.get("mlflow_event") == "model_version.created" and r.get("version") == v4
                 and r.get("result") == "accepted"]
    delivery = webhook["delivery_id"]
    assert delivery in webhook["message"]
    ours = [r for r in controller if delivery in r.get("delivery_ids", [])]
    # 2. The decision it led to: pending, being proven. The resync runs every few seconds, so a
    # resync pass may have read v4 and decided it before the webhook's own pass ran; that pass
    # then found nothing to change and says so under the delivery id, and the decision is the
    # one just before it.
    [decision] = [r for r in controller if r.get("event") == "decision" and r.get("version") == v4
                  and r.get("state") == "pending"]
    if decision not in ours:
        passes = [r for r in ours if r.get("event") == "reconcile" and r.get("model") == NAME]
        assert passes and not passes[0]["changed"], ours
        assert controller.index(decision) < controller.index(passes[0])
    assert (decision["model"], decision["policy"]) == (NAME, "backward")
    # 3. The replica's proof made it live: that decision is the replica's, and the revision
    # that carried it is published after it.
    [live] = [r for r in controller if r.get("event") == "decision" and r.get("version") == v4
              and r.get("state") == "live"]
    assert live["actor"].startswith("serving:") and controller.index(live) > controller.index(
        decision)
    prover = live["actor"].removeprefix("serving:")
    [published] = [r for r in controller[controller.index(live):] if r.get("event") == "publish"
                   and f"{NAME}/{v4}=live" in r["changes"]][:1]
    revision = published["revision"]
    assert f"published revision {revision}" in published["message"]
    # 4. The replica that took that revision (or a later one that brought the change to it).
    replica_logs = sorted((ray_temp_dir(home) / "session_latest" / "logs" / "serve")
                          .glob("sigserve_*.log"))
    taken = [r for path in replica_logs for r in json_lines(path)
             if r.get("event") == "table_taken" and f"{NAME}/{v4}=live" in r.get("changes", [])]
    assert taken, [str(p) for p in replica_logs]
    took = taken[-1]
    assert took["revision"] >= revision and took["service"] == "serving"
    assert took["message"].startswith(f"took revision {took['revision']} ")
    replica = took["replica"]
    proofs = [r for path in replica_logs for r in json_lines(path)
              if r.get("event") == "proof" and r.get("model") == NAME and r.get("version") == v4]
    assert [(r["replica"], r["outcome"]) for r in proofs] == [(prover, "passed")], proofs
    serve_logs = ray_temp_dir(home) / "session_latest" / "logs" / "serve"
    assert (serve_logs / f"replica_sigserve_Server_{replica}.log").is_file()  # Ray's own
    # ... and the revision that replica serves from carries the decision.
    assert listing(serving_url)["revision"] >= revision
    assert serve_status(serving_url, NAME, v4).json() == [{"answer": "it:hi"}]

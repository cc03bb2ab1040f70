"""The controller's HTTP boundary: webhook verification, de-duplication, the admin token, and
problem+json for every refusal. The registry is a real address where nothing listens."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from controller.app import create_app
from controller.database import make_engine, migrate
from controller.settings import ControllerSettings
from controller.store import Store
from sigserve.ports import free_port

SECRET = "hook-secret-0123456789"
TOKEN = "admin-token-0123456789"
# What replicas present on their polls (the long-poll needs it: docs/security.md).
SERVING_TOKEN = "serving-token-0123456789"
SERVING = {"Authorization": f"Bearer {SERVING_TOKEN}"}


def _settings(home: Path, **overrides: Any) -> ControllerSettings:
    return ControllerSettings(
        home=home,
        admin_token=TOKEN,
        webhook_secret=SECRET,
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        resync_interval_s=3600,
        retry_initial_s=0.05,
        # No serving replica here proves anything: versions go live as they did before proofs.
        **{"default_proof": "off", **overrides},
    )


@pytest.fixture()
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """A controller whose database published before (it holds decisions to serve)."""
    # What the controller's registry sets for its own process, restored after the test so the
    # rest of the suite keeps MLflow's usual retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings = _settings(tmp_path, serving_token=SERVING_TOKEN)
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    Store(engine).publish()
    engine.dispose()
    with TestClient(create_app(settings)) as c:
        yield c


def delivery(
    body: dict[str, object],
    *,
    delivery_id: str = "d-1",
    secret: str = SECRET,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body)
    ts = str(timestamp if timestamp is not None else int(time.time()))
    return raw.encode(), {
        "content-type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": ts,
        "X-MLflow-Signature": _generate_hmac_signature(secret, delivery_id, ts, raw),
    }


EVENT = {
    "entity": "model_version",
    "action": "created",
    "timestamp": "now",
    "data": {"name": "m", "version": "1", "source": "x", "run_id": None, "tags": {}},
}


def test_signed_delivery_is_accepted_once(client: TestClient) -> None:
    body, headers = delivery(EVENT)
    first = client.post("/webhooks/mlflow", content=body, headers=headers)
    assert first.status_code == 200 and first.json()["status"] == "accepted"
    again = client.post("/webhooks/mlflow", content=body, headers=headers)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    metrics = client.get("/metrics").text
    assert 'sigserve_webhooks_total{result="accepted"} 1.0' in metrics
    assert 'sigserve_webhooks_total{result="duplicate"} 1.0' in metrics


@pytest.mark.parametrize(
    ("secret", "age_s", "why"),
    [("not-the-secret", 0, "does not match"), (SECRET, 3600, "from now")],
)
def test_untrusted_deliveries_are_refused_with_a_problem(
    client: TestClient, secret: str, age_s: int, why: str
) -> None:
    body, headers = delivery(EVENT, secret=secret, timestamp=int(time.time()) - age_s)
    r = client.post("/webhooks/mlflow", content=body, headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert why in r.json()["detail"]


def test_unsigned_delivery_is_refused(client: TestClient) -> None:
    r = client.post("/webhooks/mlflow", json=EVENT)
    assert r.status_code == 401
    assert "missing" in r.json()["detail"]


def test_signed_but_malformed_payload_is_422_naming_the_body(client: TestClient) -> None:
    body, headers = delivery({"hello": "world"})
    r = client.post("/webhooks/mlflow", content=body, headers=headers)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "body"


def test_admin_api_needs_the_token(client: TestClient) -> None:
    assert client.get("/admin/models").status_code == 401
    for where in ("token", "access_token", "authorization"):
        assert client.get("/admin/models", params={where: TOKEN}).status_code == 401
    basic = client.get("/admin/models", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    wrong = client.get("/admin/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["content-type"].startswith("application/problem+json")
    ok = client.get("/admin/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json() == {"models": []}
    missing = client.get("/admin/models/nope", headers={"Authorization": f"Bearer {TOKEN}"})
    assert missing.status_code == 404


def test_ready_while_the_registry_is_unreachable_which_is_reported_and_table_served(
    client: TestClient,
) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"]["database"] == "ok"
    assert r.json()["checks"]["registry"].startswith("unreachable")
    full = client.get("/readyz", params={"full": "true"})
    assert full.status_code == 503 and full.headers["retry-after"]
    table = client.get("/routing-table", params={"after": -1}, headers=SERVING)
    assert table.status_code == 200 and table.json()["revision"] >= 1
    rev = table.json()["revision"]
    later = client.get("/routing-table", params={"after": rev, "timeout": 0.1}, headers=SERVING)
    assert later.status_code == 204


def test_a_fresh_database_shows_serving_no_table_until_it_has_read_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with TestClient(create_app(_settings(tmp_path, serving_token=SERVING_TOKEN))) as fresh:
        # A new epoch would win at every replica and turn each model into 404: nothing yet,
        # so replicas keep what they hold while the registry is unreachable.
        r = fresh.get("/routing-table", params={"after": 5, "epoch": "old", "timeout": 0.2},
                      headers=SERVING)
        assert r.status_code == 204
        checks = fresh.get("/readyz").json()["checks"]
        assert checks["routing_table"].startswith("not published yet")


def test_a_priming_controller_is_ready_and_reports_the_table_it_holds_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Priming a new epoch takes minutes (docs/reliability.md) and has no bound while a model
    keeps failing: were plain /readyz red until the first table, a Service would drop the
    controller and MLflow's webhooks to it would be lost. ``?full=true`` still gates on it."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with TestClient(create_app(_settings(tmp_path, serving_token=SERVING_TOKEN))) as fresh:
        r = fresh.get("/readyz")
        assert r.status_code == 200 and r.json()["status"] == "ready"
        checks = r.json()["checks"]
        assert checks["database"] == "ok"
        assert checks["worker_loop"] == checks["resync_loop"] == "ok"
        assert checks["routing_table"] == "not published yet: priming"
        full = fresh.get("/readyz", params={"full": "true"})
        assert full.status_code == 503 and full.headers["retry-after"]
        assert full.json()["checks"]["routing_table"] == "not published yet: priming"
        # A webhook sent now is taken, not lost.
        body, headers = delivery(EVENT, delivery_id="d-priming")
        assert fresh.post("/webhooks/mlflow", content=body, headers=headers).status_code == 200


def test_a_stopped_loop_still_makes_the_controller_unready(client: TestClient) -> None:
    svc = client.app.state.services  # type: ignore[attr-defined]
    assert client.get("/readyz").status_code == 200

    async def stop_resync() -> None:  # on the app's loop: a task is cancelled from its own
        task = svc.loops["resync"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    client.portal.call(stop_resync)  # type: ignore[union-attr]
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["resync_loop"] == "stopped"


def test_a_revision_past_the_database_column_is_refused(client: TestClient) -> None:
    r = client.get("/routing-table", params={"after": 2**63, "epoch": "x"}, headers=SERVING)
    assert r.status_code == 422
    assert client.get("/routing-table", params={"after": -1}, headers=SERVING).status_code == 200


def test_a_webhook_without_content_length_is_refused_before_reading(client: TestClient) -> None:
    body, headers = delivery(EVENT, delivery_id="d-chunked")

    def chunks():  # type: ignore[no-untyped-def]
        yield body

    r = client.post("/webhooks/mlflow", content=chunks(), headers=headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "content-length"


def test_a_replica_from_another_epoch_gets_the_table_at_once(client: TestClient) -> None:
    table = client.get("/routing-table", params={"after": -1}, headers=SERVING).json()
    stale = {"after": 1000, "epoch": "an-older-database", "timeout": 5}
    r = client.get("/routing-table", params=stale, headers=SERVING)
    assert r.status_code == 200
    assert r.json()["epoch"] == table["epoch"]


@pytest.mark.parametrize("bad", [
    {**EVENT, "data": {**EVENT["data"], "name": {"not": "a name"}}},  # type: ignore[dict-item]
    {**EVENT, "data": ["m"]},
    {**EVENT, "entity": 7},
    [EVENT],
])
def test_a_payload_of_the_wrong_types_is_422_and_its_retry_is_not_dropped(
    client: TestClient, bad: object
) -> None:
    body, headers = delivery(bad, delivery_id="d-typed")  # type: ignore[arg-type]
    r = client.post("/webhooks/mlflow", content=body, headers=headers)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    # Nothing was recorded: the same delivery id with a good payload is accepted, not a duplicate.
    body, headers = delivery(EVENT, delivery_id="d-typed")
    assert client.post("/webhooks/mlflow", content=body, headers=headers).json()["status"] == (
        "accepted")


def test_an_oversized_webhook_body_is_413(client: TestClient) -> None:
    huge = {**EVENT, "padding": "x" * (1024 * 1024)}
    body, headers = delivery(huge, delivery_id="d-huge")
    r = client.post("/webhooks/mlflow", content=body, headers=headers)
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("application/problem+json")
    assert 'sigserve_webhooks_total{result="too_large"} 1.0' in client.get("/metrics").text


def test_a_change_stored_but_not_yet_published_answers_what_happened(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.records import ModelRecord, VersionRecord

    svc = client.app.state.services  # type: ignore[attr-defined]
    sig = {"inputs": json.dumps([{"type": "string", "name": "p", "required": True}]),
           "outputs": None, "params": None}
    svc.store.update_model("m", lambda _: ModelRecord(
        name="m", policy="backward", default_version="1", contract=sig,
        versions={"1": VersionRecord(version="1", signature=sig, signature_read=True,
                                     mlmodel_digest="d" * 64, artifact_uri="x")}))

    def locked() -> None:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(svc.store, "publish", locked)
    r = client.post("/admin/models/m/versions/1/quarantine", json={"reason": "canary"},
                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    assert r.json()["published"] is False
    assert r.json()["versions"][0]["state"] == "quarantined"
    assert svc.store.load_model("m").versions["1"].override["reason"] == "canary"


def test_a_database_locked_by_another_writer_is_a_503_and_nothing_is_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from controller.records import ModelRecord, VersionRecord

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = _settings(tmp_path, database_busy_timeout_s=0.3)
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    store = Store(engine)
    sig = {"inputs": json.dumps([{"type": "string", "name": "p", "required": True}]),
           "outputs": None, "params": None}
    store.update_model("m", lambda _: ModelRecord(
        name="m", policy="backward", default_version="1", contract=sig,
        versions={"1": VersionRecord(version="1", signature=sig, signature_read=True,
                                     mlmodel_digest="d" * 64, artifact_uri="x")}))
    store.publish()
    events_before = store.events("m", limit=100)
    engine.dispose()
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings)) as c:
        other = sqlite3.connect(tmp_path / "controller.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            r = c.post("/admin/models/m/versions/1/quarantine", json={"reason": "canary"},
                       headers=admin)
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert int(r.headers["retry-after"]) >= 1
            body, headers = delivery(EVENT, delivery_id="d-locked")
            hook = c.post("/webhooks/mlflow", content=body, headers=headers)
            assert hook.status_code == 503  # MLflow retries a 503; nothing was recorded
            assert c.get("/readyz").status_code == 200  # reads go on (WAL)
        finally:
            other.execute("ROLLBACK")
            other.close()
        svc = c.app.state.services  # type: ignore[attr-defined]
        assert svc.store.load_model("m").versions["1"].override is None
        assert svc.store.events("m", limit=100) == events_before
        again = c.post("/admin/models/m/versions/1/quarantine", json={"reason": "canary"},
                       headers=admin)
        assert again.status_code == 200
        assert again.json()["versions"][0]["state"] == "quarantined"
        assert c.post("/webhooks/mlflow", content=body, headers=headers).json()["status"] == (
            "accepted"
        )


def test_readiness_answers_at_once_while_the_registry_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry that accepts connections and never answers (a hung MLflow) must not make
    /readyz slow: a probe timing out there takes the controller out of its Service. At most one
    ping is in flight, so probes cannot use up the threads the admin API and webhooks need."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # Short, so the test does not wait out the hung pings at shutdown; still past the bound.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(100)  # connections are taken into the backlog, never answered
    try:
        settings = _settings(tmp_path).model_copy(
            update={"mlflow_tracking_uri": f"http://127.0.0.1:{hung.getsockname()[1]}"}
        )
        engine = make_engine(settings.resolved_database_url())
        migrate(engine)
        Store(engine).publish()
        engine.dispose()
        with TestClient(create_app(settings)) as c:
            svc = c.app.state.services  # type: ignore[attr-defined]
            pings: list[int] = []
            real_ping = svc.registry.ping

            def counted() -> None:
                pings.append(1)
                real_ping()

            monkeypatch.setattr(svc.registry, "ping", counted)
            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda _: c.get("/readyz"), range(8)))
            assert time.monotonic() - started < 3.0
            assert {r.status_code for r in answers} == {200}
            assert len(pings) <= 1  # one ping in flight, however many probes
            assert c.get("/admin/models", headers={"Authorization": f"Bearer {TOKEN}"}
                         ).status_code == 200
    finally:
        hung.close()


def test_problems_speak_the_serving_apps_dialect(client: TestClient) -> None:
    """Both services name their problems ``urn:sigserve:problem:<slug>`` (``wire.problems``)."""
    admin = {"Authorization": f"Bearer {TOKEN}"}
    answers = {
        "unauthorized": client.get("/admin/models"),
        "not-found": client.get("/admin/models/nope", headers=admin),
        "invalid-request": client.put("/admin/models/nope/policy", json={}, headers=admin),
    }
    for slug, r in answers.items():
        assert r.headers["content-type"] == "application/problem+json", r.text
        body = r.json()
        assert body["type"] == f"urn:sigserve:problem:{slug}", body
        assert body["status"] == r.status_code and body["instance"] == r.request.url.path
    # Starlette's own answers (no such route) are not sigserve's problems.
    assert client.get("/no-such-route").json()["type"] == "about:blank"


def test_the_events_of_a_model_never_stored_are_404(client: TestClient) -> None:
    from controller.records import ModelRecord

    svc = client.app.state.services  # type: ignore[attr-defined]
    svc.store.update_model("m", lambda _: ModelRecord(name="m", policy="backward"), "resync")
    admin = {"Authorization": f"Bearer {TOKEN}"}
    known = client.get("/admin/models/m/events", headers=admin)
    assert known.status_code == 200 and known.json()["events"][0]["kind"] == "model"
    missing = client.get("/admin/models/nope/events", headers=admin)
    assert missing.status_code == 404 and "'nope'" in missing.json()["detail"]


def test_a_pin_keeps_the_contract_and_adopt_contract_says_which_versions_it_broke(
    client: TestClient,
) -> None:
    from controller.records import ModelRecord, VersionRecord

    def signature(*names: str) -> dict[str, str | None]:
        inputs = [{"type": "string", "name": n, "required": n == "text"} for n in names]
        return {"inputs": json.dumps(inputs), "outputs": None, "params": None}

    text, text_lang = signature("text"), signature("text", "lang")
    svc = client.app.state.services  # type: ignore[attr-defined]
    versions = {v: VersionRecord(version=v, signature=s, signature_read=True,
                                 mlmodel_digest=v * 64, artifact_uri=f"x/{v}")
                for v, s in (("1", text), ("2", text_lang))}
    svc.store.update_model("m", lambda _: ModelRecord(
        name="m", policy="backward", default_version="1", contract=text, versions=versions))
    admin = {"Authorization": f"Bearer {TOKEN}"}
    url = "/admin/models/m/default"

    r = client.put(url, json={"version": "2"}, headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["default_version"] == "2"
    assert [i["name"] for i in body["contract"]["inputs"]] == ["text"]
    assert body["contract_changed"] is False
    assert client.put(url, json={"version": "1"}, headers=admin).status_code == 200

    r = client.put(url, json={"version": "2", "adopt_contract": True}, headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["contract_changed"] is True
    assert [i["name"] for i in body["contract"]["inputs"]] == ["text", "lang"]
    assert [(c["version"], c["before"], c["after"]) for c in body["redecided"]] == [
        ("1", "live", "quarantined")]
    assert "'lang'" in body["redecided"][0]["reasons"][0]
    refused = client.put(url, json={"version": "1"}, headers=admin)
    assert refused.status_code == 409
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "'lang'" in refused.json()["reasons"][0]

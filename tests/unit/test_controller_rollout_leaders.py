"""Rollouts with two controllers on one PostgreSQL: a rollout started through the follower's
admin API and reports posted to the follower reach the leader, whose stepper takes the step;
both answer the long-poll with the weights."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controller.database import make_engine, migrate
from controller.store import Store
from tests.unit.test_controller_leadership import (
    ADMIN,
    SERVING,
    controller,
    model,
    poll_table,
    services,
)
from tests.unit.test_controller_rollout_api import report
from wire.routing_table import RoutingTable, VersionState


@pytest.fixture()
def two_live(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    engine = make_engine(postgres_url)
    migrate(engine)
    store = Store(engine)
    store.update_model("m", lambda _: model("m", VersionState.LIVE, VersionState.LIVE))
    store.publish()
    engine.dispose()
    return postgres_url


def weight_after(client: TestClient, revision: int) -> tuple[RoutingTable, float | None]:
    table = poll_table(client, revision)
    rollout = table.models["m"].rollout
    return table, rollout.weight if rollout is not None else None


def test_a_rollout_through_the_follower_is_stepped_by_the_leader(
    two_live: str, tmp_path: Path
) -> None:
    with controller(two_live, tmp_path / "a") as a, controller(two_live, tmp_path / "b") as b:
        assert services(a).leadership.is_leader and not services(b).leadership.is_leader
        first = poll_table(a, -1).revision
        body = {"candidate": "2", "steps": [10, 100], "step_s": 3600, "min_requests": 10}
        started = b.post("/admin/models/m/rollouts", json=body, headers=ADMIN)
        assert started.status_code == 201, started.text
        assert started.json()["published"] is True
        # The leader answers with the follower's publish (within its poll of the database).
        table, weight = weight_after(a, first)
        assert weight == 0.1
        posted = b.post("/serving/rollout-reports", json=report(started.json()["id"], 12, 88),
                        headers=SERVING)  # fmt: skip
        assert posted.json() == {"recorded": 1, "unknown": 0}
        stepper = services(a).rollout_stepper
        stepper.clock = lambda: datetime.now(UTC) + timedelta(hours=2)
        assert a.portal.call(stepper.tick) == ["m: step 1"]  # type: ignore[union-attr]
        _, weight = weight_after(b, table.revision)  # the follower follows the leader's
        assert weight == 1.0

"""The rollout reaches the routing table before the admin call answers (as a pin does), every
step is a new revision carrying its weight, and an ended rollout leaves the table.

The controller's stepper ticks once, on the real clock, as each app starts; the tests tick it
themselves with a clock past the step. A step's hold is long (``HOLD_S``), so that start-up tick
never steps on its own, however slowly a loaded machine gets from the rollout's start to a
restarted app (with a 1 s hold it did, and the test's own tick found nothing to do)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from controller.app import create_app
from tests.unit.test_controller_rollout_api import (  # noqa: F401  (the app fixture)
    ADMIN,
    SERVING,
    client,
    report,
    start,
    svc,
)

HOLD_S = 600
PAST_THE_HOLD = timedelta(seconds=HOLD_S + 1)


def table(client: TestClient) -> dict[str, Any]:  # noqa: F811
    answer: dict[str, Any] = client.get("/routing-table", headers=SERVING).json()
    return answer


def test_each_step_is_published_with_its_weight_and_the_end_clears_it(
    client: TestClient,  # noqa: F811
) -> None:
    before = table(client)["revision"]
    started = start(client, steps=[10, 100], step_s=HOLD_S, min_requests=0).json()
    held = table(client)
    assert held["revision"] > before
    assert held["models"]["m"]["rollout"] == {
        "id": started["id"], "candidate": "2", "weight": 0.1, "shadow": 0.0, "step": 0,
        "rel_tol": 1e-6, "abs_tol": 1e-9, "min_cosine": 0.999,
    }  # fmt: skip
    client.post("/serving/rollout-reports", json=report(started["id"], 5, 45), headers=SERVING)
    stepper = svc(client).rollout_stepper
    stepper.clock = lambda: datetime.now(UTC) + PAST_THE_HOLD
    assert client.portal.call(stepper.tick) == ["m: step 1"]  # type: ignore[union-attr]
    stepped = table(client)
    assert stepped["revision"] > held["revision"]
    assert stepped["models"]["m"]["rollout"]["weight"] == 1.0
    assert client.post("/admin/models/m/rollout/abort", headers=ADMIN).status_code == 200
    ended = table(client)
    assert ended["models"]["m"]["rollout"] is None
    assert ended["models"]["m"]["default_version"] == "1"


def test_a_restarted_controller_serves_the_rollout_and_goes_on_with_it(
    client: TestClient,  # noqa: F811
) -> None:
    started = start(client, steps=[10, 100], step_s=HOLD_S, min_requests=0).json()
    client.post("/serving/rollout-reports", json=report(started["id"], 5, 45), headers=SERVING)
    held = table(client)
    settings = svc(client).settings
    client.__exit__(None, None, None)  # the controller stops mid-rollout
    with TestClient(create_app(settings)) as again:
        # Before any step: the same table (revision, weights) from the database alone.
        assert table(again) == held
        stepper = svc(again).rollout_stepper
        stepper.clock = lambda: datetime.now(UTC) + PAST_THE_HOLD
        assert again.portal.call(stepper.tick) == ["m: step 1"]  # type: ignore[union-attr]
        assert table(again)["models"]["m"]["rollout"]["weight"] == 1.0

"""The routing table carries each version's environment of its own (controller.table_builder),
which is what a replica builds, proves and serves it in (wire.routing_table.EnvironmentSpec)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.own_environments import environment_of
from controller.store import Store
from tests.unit.test_controller_http import TOKEN
from tests.unit.test_controller_own_environments import (  # noqa: F401
    REQUIREMENTS,
    SERVING_TOKEN,
    digest,
    published_controller,
    report,
    store,
    version,
)


def test_the_published_table_gives_each_version_its_environment(store: Store) -> None:  # noqa: F811
    table = store.publish().models["m"].versions
    assert table["1"].environment is None  # every need met: the shared environment
    two, three = table["2"].environment, table["3"].environment
    assert two is not None and three is not None
    assert two == environment_of(version(store, "2"))
    assert (two.kind, two.requirements) == ("layered", ["tiny-pkg==0.3.1"])
    assert three.digest == two.digest  # the same needs: one environment, built once


def test_the_admin_api_shows_where_each_version_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _ = published_controller(tmp_path, monkeypatch)
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings)) as c:
        model = c.get("/admin/models/m", headers=admin).json()
        served = {v["version"]: v["served_in"] for v in model["versions"]}
        assert served["1"] == {"kind": "shared"}
        assert served["2"]["kind"] == "layered"
        assert served["2"]["requirements"] == ["tiny-pkg==0.3.1"]
        assert "which the serving environment lacks" in served["2"]["reason"]
        assert served["2"]["shared_failure"] is None


def test_proofs_are_counted_by_result_and_where_they_were_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, own = published_controller(tmp_path, monkeypatch)
    auth = {"Authorization": f"Bearer {SERVING_TOKEN}"}
    with TestClient(create_app(settings)) as c:
        body = {"model": "m", "version": "2", **report("2")}
        body.pop("at")
        assert c.post("/serving/proofs", json=body, headers=auth).status_code == 409  # shared
        mine = {**body, "environment_digest": own.digest}
        assert c.post("/serving/proofs", json=mine, headers=auth).status_code == 200
        again = {**mine, "replica": "r9"}  # another replica's proof of it: the first is kept
        assert c.post("/serving/proofs", json=again, headers=auth).json()["recorded"] is False
        one = {**body, "version": "1", "mlmodel_digest": digest("1"), "exercised": False}
        assert c.post("/serving/proofs", json=one, headers=auth).status_code == 200
        metrics = c.get("/metrics").text
    for result, where in (
        ("stale", "shared"), ("passed", "own"), ("repeated", "own"), ("not_exercised", "shared")
    ):  # fmt: skip
        line = f'sigserve_proof_reports_total{{environment="{where}",result="{result}"}} 1.0'
        assert line in metrics, line
    assert 'sigserve_proof_reports_total{environment="shared",result="passed"} 0.0' in metrics

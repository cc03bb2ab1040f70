"""A dry run's environment (``sigserve check --prove`` of an artifact with one of its own): what
becomes of it once the trial is answered. No table names it, so no replica lets it go or touches
it; it goes when ``SIGSERVE_ENVIRONMENT_IDLE_TTL_S`` passes untouched, and 0 means never, as for
any environment (docs/operations.md): kept, so a version registered later is served in the
environment it was proven in without a build. The real ``Trials`` and ``EnvironmentManager``,
Ray being the in-process seam of ``test_serving_environment_manager``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.problems import install_problem_handlers
from serving.trials import TRIALS_PATH, Trials, install
from tests.unit.test_serving_environment_manager import InProcess, manager
from tests.unit.test_serving_environments import LAYERED, Numerals, entry_for

TOKEN = "serving-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    entry = entry_for(tmp_path_factory.mktemp("trial-env"), "numerals", Numerals())
    return {
        "model": "numerals", "source": entry.source, "mlmodel_digest": entry.mlmodel_digest,
        "signature": entry.signature, "environment": LAYERED.model_dump(mode="json"),
        "timeout_s": 60,
    }  # fmt: skip


def _replica(cluster: InProcess, idle_ttl_s: float) -> Iterator[TestClient]:
    app = FastAPI()
    install_problem_handlers(app)
    environments = manager(cluster, idle_ttl_s=idle_ttl_s)
    install(app, Trials(TOKEN, predict_timeout_s=30, replica="r1", environments=environments))
    with TestClient(app) as client:
        yield client


def _proven(cluster: InProcess, idle_ttl_s: float, trial: dict[str, Any]) -> None:
    for http in _replica(cluster, idle_ttl_s):
        r = http.post(TRIALS_PATH, json=trial, headers=AUTH)
        assert r.status_code == 200, r.text
        assert (r.json()["outcome"], r.json()["environment_digest"]) == ("passed", LAYERED.digest)


def test_with_an_idle_ttl_of_0_a_trials_environment_is_kept(trial: dict[str, Any]) -> None:
    cluster = InProcess()
    _proven(cluster, 0.0, trial)
    time.sleep(0.6)  # twice the TTL the next test reaps at
    assert len(cluster.live()) == 1
    assert cluster.created[0].host.exited is None  # type: ignore[union-attr]


def test_with_an_idle_ttl_a_trials_environment_goes_once_untouched_for_it(
    trial: dict[str, Any],
) -> None:
    cluster = InProcess()
    _proven(cluster, 0.3, trial)
    assert cluster.killed.wait(5), "the environment of a trial stayed past its idle TTL"
    assert cluster.live() == []
    assert "no replica touched it" in (cluster.created[0].host.exited or "")  # type: ignore[union-attr]

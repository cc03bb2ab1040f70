"""``sigserve rollout`` against the real controller app (its admin API through FastAPI's test
client, handed to the CLI's client as its transport): what a person types, what the controller
is asked, what is printed, the exit codes."""

from __future__ import annotations

import argparse

import httpx
import pytest
from fastapi.testclient import TestClient

from sigserve import rollout_cli
from sigserve.admin_client import AdminToken
from sigserve.cli import main
from tests.unit.test_controller_rollout_api import client  # noqa: F401  (the app fixture)

TOKEN = "admin-token-0123456789"


@pytest.fixture()
def cli(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> TestClient:  # noqa: F811
    monkeypatch.setenv("SIGSERVE_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("COLUMNS", "200")

    def forward(request: httpx.Request) -> httpx.Response:
        answer = client.request(request.method, request.url.path, content=request.content,
                                headers=dict(request.headers))  # fmt: skip
        return httpx.Response(answer.status_code, content=answer.content,
                              headers=answer.headers)  # fmt: skip

    def open_client(url: str, token: AdminToken, timeout_s: float) -> rollout_cli.RolloutClient:
        return rollout_cli.RolloutClient(url, token, transport=httpx.MockTransport(forward))

    monkeypatch.setattr(rollout_cli, "open_client", open_client)
    return client


def test_a_rollout_is_started_followed_and_aborted(
    cli: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rollout", "m", "2", "--canary", "5,25,100", "--step", "10m",
                 "--shadow", "20%", "--min-requests", "50"]) == 0  # fmt: skip
    started = capsys.readouterr().out
    assert "m v2 (default v1) running" in started and "[5%] -> 25% -> 100%" in started
    assert main(["rollout", "status", "m", "--json"]) == 0
    status = capsys.readouterr().out
    assert '"step_s": 600.0' in status and '"min_requests": 50' in status
    assert '"shadow": 0.2' in status
    assert main(["rollout", "m", "2"]) == 1  # one at a time: refused, 409
    assert "already running" in capsys.readouterr().err
    assert main(["rollout", "abort", "m"]) == 0
    assert "aborted" in capsys.readouterr().out
    assert main(["rollout", "promote", "m"]) == 1  # nothing runs


def test_promote_skips_ahead_and_unknown_models_are_not_found(
    cli: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rollout", "m", "2"]) == 0
    assert main(["rollout", "promote", "m"]) == 0
    assert "promoted" in capsys.readouterr().out
    assert main(["rollout", "status", "nobody"]) == 3


def test_durations_percentages_and_steps_are_read_as_people_write_them() -> None:
    assert [rollout_cli.duration(t) for t in ("90", "90s", "10m", "2h")] == [90, 90, 600, 7200]
    assert rollout_cli.percent("20%") == 20 and rollout_cli.steps("0,5,100") == [0, 5, 100]
    for bad in ("10x", "-1m", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            rollout_cli.duration(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        rollout_cli.steps("5,150")

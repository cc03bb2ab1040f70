"""`sigserve check --prove` (issue 17): the CLI asks the controller for the dry run's proof, waits
long enough for it, and turns its answer into the exit codes CI reads (the controller's side:
tests/unit/test_controller_dry_run.py; the real stack: tests/integration/test_check_prove.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from sigserve import admin_cli
from sigserve.admin_client import AdminClient, AdminToken
from sigserve.cli import main
from tests.unit.test_admin_cli import CHECKED, problem, seen

__all__ = ["seen"]  # the fixture, used here by name

FAILED = ("failed its proof on serving (replica r1 at 2026-12-06T01:00:00+00:00): ValueError: "
          "the model was never fitted; release it to try again")  # fmt: skip


class Controller:
    """The controller's admin API: answers ``answer``, keeps each call's (timeout, body)."""

    def __init__(self) -> None:
        self.answer = httpx.Response(500)
        self.calls: list[tuple[float, Any]] = []

    def open_client(self, url: str, token: AdminToken, timeout_s: float) -> AdminClient:
        def handle(request: httpx.Request) -> httpx.Response:
            self.calls.append((timeout_s, json.loads(request.content)))
            return self.answer

        return AdminClient(url, token, timeout_s=timeout_s, transport=httpx.MockTransport(handle))


@pytest.fixture()
def ctl(monkeypatch: pytest.MonkeyPatch, seen: list[httpx.Request]) -> Controller:
    controller = Controller()
    monkeypatch.setattr(admin_cli, "open_client", controller.open_client)
    return controller


def _run(ctl: Controller, answer: httpx.Response, capsys: pytest.CaptureFixture[str]
         ) -> tuple[int, str, tuple[float, Any]]:  # fmt: skip
    ctl.answer, ctl.calls[:] = answer, []
    code = main(["check", "runs:/r1/model", "--model", "churn", "--prove"])
    out, err = capsys.readouterr()
    return code, " ".join((out + err).split()), ctl.calls[0]


def test_a_failed_proof_exits_1_with_its_cause_and_a_pass_exits_0(
    ctl: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = {**CHECKED, "reasons": [FAILED], "warnings": [], "proof": {"outcome": "failed"}}
    code, out, (timeout, body) = _run(ctl, httpx.Response(200, json=failed), capsys)
    assert code == 1, out
    assert body == {"source": "runs:/r1/model", "prove": True}
    assert "ValueError: the model was never fitted" in out
    # A proof may build an environment first: the controller's bound, not the 30 s default.
    assert timeout >= admin_cli.PROVE_WAIT_S
    note = ("proof on its input example in the shared serving environment (replica r1, 40 ms): "
            "passed")  # fmt: skip
    passed = {**CHECKED, "verdict": "live", "reasons": [], "notes": [note]}
    code, out, _ = _run(ctl, httpx.Response(200, json=passed), capsys)
    assert code == 0 and note in out, out


def test_a_proof_the_controller_cannot_make_exits_2_saying_why(
    ctl: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    said = ("--prove needs the serving app's URL: the controller has no SIGSERVE_SERVING_URL "
            "(set it")  # fmt: skip
    code, out, _ = _run(ctl, problem(501, said + " ...)"), capsys)
    assert code == 2 and said in out, out
    code, out, _ = _run(ctl, problem(503, "cannot tell: cannot reach the serving app"), capsys)
    assert code == 2 and "cannot reach the serving app" in out, out

"""The admin CLI against a scripted controller (an httpx MockTransport): how problem+json and
transport failures become exceptions at the client's one boundary, and which exit code and words
each gives a person or a script. The real controller is in tests/integration/test_cli.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sigserve import admin_cli
from sigserve.admin_client import (
    AdminClient,
    AdminToken,
    NotFound,
    Refused,
    Unauthorized,
    Unavailable,
    find_token,
)
from sigserve.cli import main

TOKEN = "s3cret-admin-token-value"
PROBLEM = "application/problem+json"

VERSION: dict[str, Any] = {
    "version": "1", "state": "live", "reasons": [], "warnings": [], "has_signature": True,
    "decided_at": "2025-01-02T03:04:05+00:00", "source": None, "artifact_uri": None,
    "mlmodel_digest": None, "environment": None, "override": None, "load_failure": None,
}  # fmt: skip
MODEL: dict[str, Any] = {
    "name": "m", "default_version": "1", "policy": "backward", "environment_policy": "strict",
    "contract": None, "last_webhook_at": None, "last_version_webhook_at": None,
    "alias": {"name": "serving", "version": "1"}, "alias_refusal": None,
    "registry_warning": None,
    "versions": [
        VERSION,
        {**VERSION, "version": "2", "state": "quarantined",
         "reasons": ["input 'prompt': removed; clients of the contract send it"],
         "override": None},
        {**VERSION, "version": "3", "state": "quarantined", "reasons": ["quarantined by hand"],
         "warnings": ["pandas: 2.2 here, 2.1 recorded"],
         "override": {"action": "quarantine", "reason": "bad canary", "actor": "admin",
                      "at": "2025-01-02T03:04:05+00:00"},
         "load_failure": {"cause": "ModuleNotFoundError: no module named 'x'",
                          "replica": "r1", "at": "2025-01-02T03:04:06+00:00"}},
    ],
}  # fmt: skip


def problem(status: int, detail: str, **extra: Any) -> httpx.Response:
    body = {"type": "urn:sigserve:problem:x", "title": "t", "status": status, "detail": detail}
    return httpx.Response(status, json={**body, **extra}, headers={"content-type": PROBLEM})


Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> AdminClient:
    return AdminClient("http://ctl", AdminToken(TOKEN, "SIGSERVE_ADMIN_TOKEN"),
                       transport=httpx.MockTransport(handler))  # fmt: skip


@pytest.fixture()
def seen(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    monkeypatch.setenv("SIGSERVE_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("COLUMNS", "200")
    return []


def serve(monkeypatch: pytest.MonkeyPatch, seen: list[httpx.Request], handler: Handler) -> None:
    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    def open_client(url: str, token: AdminToken, timeout_s: float) -> AdminClient:
        return AdminClient(url, token, timeout_s=timeout_s, transport=httpx.MockTransport(record))

    monkeypatch.setattr(admin_cli, "open_client", open_client)


def test_problems_become_typed_errors_with_detail_and_reasons() -> None:
    refused = problem(409, "version 2 would break clients", reasons=["input 'a': removed"])
    with pytest.raises(Refused) as exc:
        client(lambda _: refused).pin("m", "2")
    assert (exc.value.status, str(exc.value)) == (409, "version 2 would break clients")
    assert exc.value.reasons == ["input 'a': removed"]

    invalid = problem(422, "reason: too short", errors=[{"field": "reason", "reason": "short"}])
    with pytest.raises(Refused) as exc:
        client(lambda _: invalid).quarantine("m", "1", " ")
    assert exc.value.reasons == ["reason: short"]

    with pytest.raises(NotFound, match="no version '9'"):
        client(lambda _: problem(404, "registered model 'm' has no version '9'")).pin("m", "9")
    with pytest.raises(Unavailable, match="503: database locked"):
        client(lambda _: problem(503, "database locked")).list_models()
    with pytest.raises(Unavailable, match="502"):
        client(lambda _: httpx.Response(502, text="<html>bad gateway</html>")).list_models()


def test_an_unauthorized_answer_names_where_the_token_came_from_never_the_token() -> None:
    with pytest.raises(Unauthorized) as exc:
        client(lambda _: problem(401, "a valid admin bearer token is required")).list_models()
    assert "SIGSERVE_ADMIN_TOKEN" in str(exc.value)
    assert TOKEN not in str(exc.value) and TOKEN not in repr(exc.value.args)
    assert TOKEN not in repr(AdminToken(TOKEN, "x"))


def test_transport_failures_are_temporary() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(Unavailable, match="cannot reach the controller at http://ctl"):
        client(refuse).list_models()
    with pytest.raises(Unavailable, match="did not answer in time"):
        client(slow).model("m")


def test_requests_carry_the_token_and_the_api_s_body(seen: list[httpx.Request]) -> None:
    def ok(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={**MODEL, "published": True})

    c = client(ok)
    c.pin("a b/c", "3", force=True)
    c.set_policy("m", environment="warn")
    c.events("m", limit=5, before=40)
    assert seen[0].url.raw_path == b"/admin/models/a%20b%2Fc/default"
    assert json.loads(seen[0].content) == {"version": "3", "force": True}
    assert json.loads(seen[1].content) == {"environment": "warn"}
    assert dict(seen[2].url.params) == {"limit": "5", "before": "40"}
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in seen)


def test_the_token_comes_from_the_environment_else_the_local_stack_s_secrets(
    tmp_path: Path,
) -> None:
    (tmp_path / "secrets.json").write_text(json.dumps({"admin_token": "from-file"}))
    home = {"SIGSERVE_HOME": str(tmp_path)}
    assert find_token({**home, "SIGSERVE_ADMIN_TOKEN": "from-env"}).value == "from-env"
    found = find_token(home)
    assert (found.value, found.source) == ("from-file", str(tmp_path / "secrets.json"))
    with pytest.raises(Unauthorized, match="set SIGSERVE_ADMIN_TOKEN"):
        find_token({"SIGSERVE_HOME": str(tmp_path / "nowhere")})


@pytest.mark.parametrize(("answer", "code"), [
    (problem(409, "refused", reasons=["input 'a': removed"]), 1),
    (problem(422, "version: field required", errors=[{"field": "version", "reason": "x"}]), 1),
    (problem(404, "registered model 'm' does not exist"), 3),
    (problem(503, "registry unavailable"), 4),
    (httpx.Response(500, text="boom"), 4),
    (problem(401, "a valid admin bearer token is required"), 5),
])  # fmt: skip
def test_exit_codes(
    answer: httpx.Response, code: int, seen: list[httpx.Request],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    serve(monkeypatch, seen, lambda _: answer)
    assert main(["pin", "m", "2"]) == code
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    if code == 4:
        assert "try again" in err


def test_a_refused_pin_prints_detail_reasons_and_force_and_json_prints_the_problem(
    seen: list[httpx.Request], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    serve(monkeypatch, seen, lambda _: problem(409, 'version 2 breaks; send "force": true',
                                               reasons=["input 'a'"]))
    assert main(["pin", "m", "2"]) == 1
    out, err = capsys.readouterr()
    assert "version 2 breaks" in err and "• input 'a'" in err and "--force" in err
    assert main(["pin", "m", "2", "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["reasons"] == ["input 'a'"]


def test_usage_errors_exit_2(seen: list[httpx.Request], capsys: pytest.CaptureFixture[str]
                             ) -> None:  # fmt: skip
    assert main(["policy", "m"]) == 2
    for argv in (["policy", "m", "loose"], ["quarantine", "m", "1"], ["events", "m", "--limit",
                 "0"], ["pin", "m"]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
    assert seen == []


def test_status_of_one_model_shows_states_reasons_override_and_load_failure(
    seen: list[httpx.Request], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    serve(monkeypatch, seen, lambda _: httpx.Response(200, json=MODEL))
    assert main(["status", "m"]) == 0
    out = capsys.readouterr().out
    for text in ("default 1", "policy backward", "environment strict", "alias serving -> 1",
                 "• input 'prompt': removed", "warning: pandas", "2025-01-02"):  # fmt: skip
        assert text in out, text
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in out.splitlines() if line.startswith("│") and line.split("│")[1].strip()}
    # The version's first line carries its state; a second line under v1 says it is the default.
    assert rows["1"] == "live" and rows["2"] == "quarantined" and rows["3"] == "quarantined"
    assert rows["default"] == "" and "by hand" in out and "load failed" in out
    assert main(["status", "m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == MODEL


def test_events_summarise_each_change_and_an_empty_log_of_an_unknown_model_is_3(
    seen: list[httpx.Request], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    page = {"events": [
        {"id": 7, "at": "2025-01-02T03:04:05+00:00", "kind": "pin", "version": "2",
         "actor": "admin", "before": {"default_version": "1", "contract": {"a": 1}},
         "after": {"default_version": "2", "contract": {"a": 2}}},
        {"id": 6, "at": None, "kind": "decision", "version": "2", "actor": "webhook:d-1",
         "before": {"state": "pending", "reasons": []},
         "after": {"state": "quarantined", "reasons": ["input 'a': removed"]}},
    ], "next": 6}  # fmt: skip
    serve(monkeypatch, seen, lambda r: httpx.Response(200, json=page) if r.url.path.endswith(
        "/events") else problem(404, "no"))  # fmt: skip
    assert main(["events", "m", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    for text in ("default 1 -> 2 (the contract changed)", "pending -> quarantined",
                 "• input 'a': removed", "webhook:d-1", "--before 6"):  # fmt: skip
        assert text in out, text
    page = {"events": [], "next": None}
    assert main(["events", "nope"]) == 3


def test_a_rollout_event_says_its_step_weight_gates_and_why_it_ended(
    seen: list[httpx.Request], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    page = {"events": [
        {"id": 9, "at": None, "kind": "rollout", "version": "4", "actor": "rollout",
         "before": {}, "after": {"rollout": "r1", "state": "rolled-back", "step": 0,
                                 "weight": 0.05, "gates": ["errors failed: 30% > 1%"],
                                 "reason": "gate-failed"}},
    ], "next": None}  # fmt: skip
    serve(monkeypatch, seen, lambda r: httpx.Response(200, json=page))
    assert main(["events", "m"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("rollout rolled-back step 0 (5%): gate-failed", "errors failed: 30% > 1%"):
        assert text in out, text


def test_adopt_asks_for_the_contract_and_lists_the_versions_it_broke(
    seen: list[httpx.Request], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    broke = {"version": "1", "before": "live", "after": "quarantined",
             "reasons": ["input 'lang' (string, optional) is missing"]}  # fmt: skip

    def answer(request: httpx.Request) -> httpx.Response:
        adopted = json.loads(request.content).get("adopt_contract", False)
        return httpx.Response(200, json={**MODEL, "default_version": "2", "published": True,
                                         "contract_changed": adopted,
                                         "redecided": [broke] if adopted else []})

    serve(monkeypatch, seen, answer)
    assert main(["pin", "m", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "m: version 2 is the default; the contract is kept" in out
    assert json.loads(seen[-1].content) == {"version": "2", "force": False}
    assert main(["adopt", "m", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert json.loads(seen[-1].content) == {"version": "2", "force": False,
                                            "adopt_contract": True}  # fmt: skip
    assert "its signature is the contract" in out
    assert "version 1: live -> quarantined • input 'lang' (string, optional) is missing" in out
    assert main(["adopt", "m", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["redecided"] == [broke]


CHECKED: dict[str, Any] = {
    "model": "churn", "source": "runs:/r1/model", "location": "mlflow-artifacts:/1/m/artifacts",
    "verdict": "quarantined", "would_be_version": "4",
    "reasons": ["input 'b' (double, required) is missing; this version reads 'c'"],
    "warnings": ["requirement 'pandas==2.2.3': 3.1.1 here"], "first_version": False,
    "contract": {"inputs": [{"type": "double", "name": "a", "required": True},
                            {"type": "double", "name": "b", "required": True}],
                 "outputs": [{"type": "double", "name": "score", "required": True}],
                 "params": None},
    "policy": "backward", "environment_policy": "strict", "notes": [], "written": False,
}  # fmt: skip


@pytest.mark.parametrize(("verdict", "code"), [("live", 0), ("quarantined", 1), ("pending", 2)])
def test_check_exits_with_what_the_gate_would_do(
    verdict: str, code: int, seen: list[httpx.Request], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    answer = {**CHECKED, "verdict": verdict}
    serve(monkeypatch, seen, lambda _: httpx.Response(200, json=answer))
    assert main(["check", "runs:/r1/model", "--model", "churn"]) == code
    assert seen[0].url.raw_path == b"/admin/models/churn/check"
    assert json.loads(seen[0].content) == {"source": "runs:/r1/model"}
    out = " ".join(capsys.readouterr().out.split())
    said = {"live": "would go live", "quarantined": "would be quarantined",
            "pending": "cannot be decided yet"}[verdict]
    assert f"churn: runs:/r1/model {said}" in out
    for text in ("• input 'b' (double, required) is missing; this version reads 'c'",
                 "warning: requirement 'pandas==2.2.3'", "as version 4",
                 "inputs: a: double, b: double", "outputs: score: double",
                 "Nothing was registered or written."):  # fmt: skip
        assert text in out, text
    assert main(["check", "runs:/r1/model", "--model", "churn", "--json"]) == code
    assert json.loads(capsys.readouterr().out) == answer


@pytest.mark.parametrize("answer", [
    problem(422, "source: not a URI", errors=[{"field": "source", "reason": "not a URI"}]),
    problem(503, "registry unavailable"),
    problem(401, "a valid admin bearer token is required"),
    problem(404, "no"),
])  # fmt: skip
def test_check_cannot_tell_is_2_with_the_controllers_words(
    answer: httpx.Response, seen: list[httpx.Request], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    serve(monkeypatch, seen, lambda _: answer)
    assert main(["check", "runs:/r1/model", "--model", "churn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigserve check: ") and TOKEN not in err


def test_check_of_an_unreachable_controller_is_2(
    monkeypatch: pytest.MonkeyPatch, seen: list[httpx.Request],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    serve(monkeypatch, seen, refuse)
    assert main(["check", "models:/churn/3", "--model", "churn"]) == 2
    assert "cannot reach the controller" in capsys.readouterr().err


def test_check_of_a_local_directory_sends_its_files(
    tmp_path: Path, seen: list[httpx.Request], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    (tmp_path / "requirements.txt").write_text("pandas==2.2.3\n")
    (tmp_path / "model.pkl").write_bytes(b"\0" * 100)  # never read
    first = {**CHECKED, "model": "new", "source": None, "verdict": "live", "reasons": [],
             "first_version": True,
             "notes": ["would be the model's first version: its signature becomes the contract"]}
    serve(monkeypatch, seen, lambda _: httpx.Response(200, json=first))
    assert main(["check", str(tmp_path), "--model", "new"]) == 0
    assert json.loads(seen[0].content) == {"local": {
        "mlmodel": "flavors: {}\n", "requirements": "pandas==2.2.3\n", "python_env": None}}
    out = " ".join(capsys.readouterr().out.split())
    assert "new: the local model would go live" in out
    assert "its own signature (the model's first version)" in out
    assert "its signature becomes the contract" in out


def test_check_refuses_what_it_cannot_send_before_asking(
    tmp_path: Path, seen: list[httpx.Request], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    serve(monkeypatch, seen, lambda _: httpx.Response(200, json=CHECKED))
    assert main(["check", str(tmp_path), "--model", "m"]) == 2  # no MLmodel
    assert "has no MLmodel file" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "nowhere"), "--model", "m"]) == 2
    assert "is not a directory here, nor a URI" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["check", "runs:/r1/model"])  # --model is required
    assert exc.value.code == 2
    assert seen == []


def test_check_of_local_files_too_large_for_one_call_says_what_to_do_instead(
    tmp_path: Path, seen: list[httpx.Request], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    (tmp_path / "MLmodel").write_text("signature: " + "x" * 20_000)
    serve(monkeypatch, seen, lambda _: problem(413, "the request body is too large: this "
                                                    "route takes at most 16384 bytes"))
    assert main(["check", str(tmp_path), "--model", "m"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "at most 16384 bytes" in err and "check the runs:/ URI instead" in err

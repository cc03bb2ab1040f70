"""The admin CLI (`sigserve status|pin|adopt|quarantine|release|events|policy`) against the real
controller of the session (a real MLflow server behind it): what a person reads, the exit codes
a script branches on, and `--json` as a script parses it, once from a `sigserve` subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sigserve.cli import main
from sigserve.ports import free_port
from sigserve.stack import Secrets
from tests.integration.conftest import ControllerHandle, register_echo, wait_for

SIGSERVE = Path(sys.executable).parent / "sigserve"


def decided(ctl: ControllerHandle, name: str, states: dict[str, str]) -> None:
    wait_for(lambda: all(ctl.state_of(name, v) == s for v, s in states.items()), 60)


@pytest.fixture(scope="module")
def gate(controller_handle: ControllerHandle, serving_url: str) -> str:
    """v1 and v3 read 'prompt' (live), v2 reads 'text' instead (quarantined: breaks v1's API).
    The serving app is up: a version is live once a replica has proven it."""
    name = "cli_gate"
    register_echo(name, tag="one")
    register_echo(name, tag="two", input_label="text")
    register_echo(name, tag="three")
    decided(controller_handle, name, {"1": "live", "2": "quarantined", "3": "live"})
    return name


@pytest.fixture()
def cli(ctl: ControllerHandle, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Any:  # fmt: skip
    """Run `sigserve ARGV` in this process as a user with the token in the environment would;
    its exit code, stdout and stderr (whitespace as one space: rich wraps long lines)."""
    monkeypatch.setenv("SIGSERVE_ADMIN_TOKEN", ctl.secrets.admin_token)
    monkeypatch.setenv("SIGSERVE_CONTROLLER_URL", ctl.url)
    monkeypatch.setenv("COLUMNS", "160")

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse: a usage error
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, " ".join(err.split())

    return run


def cells(out: str) -> list[list[str]]:
    """The rows of the tables printed, as their cells' text."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()
            if line.startswith("│")]  # fmt: skip


def test_status_of_all_models_and_of_one(gate: str, ctl: ControllerHandle, cli: Any) -> None:
    code, out, _ = cli("status")
    assert code == 0
    assert [gate, "1", "backward, isolate", "2", "1", "0"] in cells(out)

    code, out, _ = cli("status", gate)
    assert code == 0
    assert f"{gate}   default 1   policy backward   environment isolate" in out
    rows = {r[0]: r for r in cells(out) if r[0]}
    assert (rows["1"][1], rows["2"][1], rows["3"][1]) == ("live", "quarantined", "live")
    reasons = ctl.model(gate)["versions"][1]["reasons"]
    assert reasons and "'prompt'" in reasons[0]
    shown = " ".join(" ".join(r[3] for r in cells(out)).split())
    assert all(" ".join(f"• {r}".split()) in shown for r in reasons)


def test_json_from_a_subprocess_is_the_api_s_document(gate: str, ctl: ControllerHandle) -> None:
    env = {**os.environ, "SIGSERVE_ADMIN_TOKEN": ctl.secrets.admin_token}
    done = subprocess.run([str(SIGSERVE), "status", gate, "--json", "--controller", ctl.url],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["versions"] == ctl.model(gate)["versions"]
    assert [(v["version"], v["state"]) for v in shown["versions"]] == [
        ("1", "live"), ("2", "quarantined"), ("3", "live")]
    assert shown["default_version"] == "1" and shown["policy"] == "backward"

    done = subprocess.run([str(SIGSERVE), "status", "--json", "--controller", ctl.url],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = {m["name"]: m for m in json.loads(done.stdout)["models"]}
    assert (listed[gate]["live"], listed[gate]["quarantined"]) == (2, 1)


def test_pin_moves_the_default_and_a_refused_pin_exits_1_with_the_reasons(
    ctl: ControllerHandle, cli: Any
) -> None:
    name = "cli_pin"
    register_echo(name, tag="one")
    register_echo(name, tag="two")
    register_echo(name, tag="three", input_label="text")
    decided(ctl, name, {"1": "live", "2": "live", "3": "quarantined"})

    code, out, _ = cli("pin", name, "2")
    assert code == 0 and f"{name}: version 2 is the default" in out
    assert ctl.model(name)["default_version"] == "2"

    code, out, err = cli("pin", name, "3")
    assert code == 1 and out == ""
    assert f"version 3 breaks the contract of '{name}'" in err
    reasons = ctl.model(name)["versions"][2]["reasons"]
    assert reasons and all(" ".join(f"• {r}".split()) in err for r in reasons)
    assert "--force" in err
    code, out, _ = cli("pin", name, "3", "--json")
    assert code == 1 and json.loads(out)["status"] == 409
    assert json.loads(out)["reasons"] == reasons
    assert ctl.model(name)["default_version"] == "2"

    code, out, _ = cli("pin", name, "3", "--force")
    assert code == 0 and "its signature is the contract" in out
    # Version 3 was never proven (quarantined until now): live once a replica has proven it.
    decided(ctl, name, {"1": "quarantined", "2": "quarantined", "3": "live"})


def test_adopt_makes_the_contract_and_names_the_versions_it_quarantined(
    ctl: ControllerHandle, cli: Any
) -> None:
    from tests.integration.test_pinning import register_text_echo

    name = "cli_adopt"
    register_text_echo(name, tag="one", lang=False)
    register_text_echo(name, tag="two", lang=True)
    decided(ctl, name, {"1": "live", "2": "live"})

    code, out, _ = cli("pin", name, "2")
    assert code == 0 and f"{name}: version 2 is the default; the contract is kept" in out
    code, out, _ = cli("adopt", name, "2")
    out = " ".join(out.split())
    assert code == 0 and "its signature is the contract" in out
    reasons = ctl.model(name)["versions"][0]["reasons"]
    assert f"version 1: live -> quarantined • {reasons[0]}" in out
    assert [i["name"] for i in ctl.model(name)["contract"]["inputs"]] == ["text", "lang"]
    code, _, err = cli("pin", name, "1")
    assert code == 1 and "--force" in err


def test_quarantine_release_and_the_events_they_leave(gate: str, ctl: ControllerHandle,
                                                      cli: Any) -> None:  # fmt: skip
    code, out, _ = cli("quarantine", gate, "3", "--reason", "bad canary")
    assert code == 0 and f"{gate}: version 3 is quarantined" in out
    assert ctl.state_of(gate, "3") == "quarantined"
    assert "bad canary" in " ".join(out.split())
    code, _, err = cli("quarantine", gate, "3", "--reason", " ")
    assert code == 1 and "reason" in err

    code, out, _ = cli("release", gate, "3", "--reason", "fixed")
    assert code == 0 and f"{gate}: version 3 is live" in out
    assert ctl.state_of(gate, "3") == "live"

    code, out, _ = cli("events", gate, "--limit", "4")
    assert code == 0
    rows = [r for r in cells(out) if r[0]]  # the first line of each event's row
    assert [(r[2], r[3], r[4]) for r in rows] == [
        ("decision", "3", "admin"), ("override", "3", "admin")] * 2
    assert rows[0][5] == "quarantined -> live"
    assert rows[1][5] == "override removed (was quarantine: bad canary)"
    assert rows[2][5] == "live -> quarantined"
    assert rows[3][5].startswith("quarantined by hand (admin, ")
    assert f"Older: sigserve events {gate} --before {rows[3][0]}" in out

    code, out, _ = cli("events", gate, "--limit", "2", "--json")
    assert code == 0
    page = json.loads(out)
    assert [(e["kind"], e["version"], e["actor"]) for e in page["events"]] == [
        ("decision", "3", "admin"), ("override", "3", "admin")]
    assert page["events"][0]["after"] == {"state": "live", "reasons": []}
    assert page["events"][1]["before"]["reason"] == "bad canary"
    assert page["events"][1]["after"] is None
    assert page["next"] == page["events"][1]["id"]


def test_policy_sets_either_policy_or_both(ctl: ControllerHandle, cli: Any) -> None:
    name = "cli_policy"
    register_echo(name, tag="one")
    decided(ctl, name, {"1": "live"})
    code, out, _ = cli("policy", name, "exact", "--environment", "shared")
    assert code == 0 and f"{name}: policy exact, environment shared" in out
    model = ctl.model(name)
    assert (model["policy"], model["environment_policy"]) == ("exact", "shared")
    code, out, _ = cli("policy", name, "--environment", "off")
    assert code == 0 and (ctl.model(name)["policy"], ctl.model(name)["environment_policy"]) == (
        "exact", "off")  # fmt: skip
    code, out, _ = cli("events", name, "--limit", "5")
    policies = [r for r in cells(out) if r[0] and r[2] == "policy"]
    assert code == 0 and (policies[0][4], policies[0][5]) == ("admin", "environment shared -> off")
    # The first change may be logged in two events: the controller writes the registry's tags
    # first, one at a time, and a resync between the two takes the first (the tag wins).
    earlier = ", ".join(r[5] for r in policies[1:])
    assert "policy backward -> exact" in earlier and "environment isolate -> shared" in earlier

    assert cli("policy", name, "loose")[0] == 2
    assert cli("policy", name)[0] == 2
    assert ctl.model(name)["policy"] == "exact"


def test_exit_codes_for_a_wrong_token_an_unreachable_controller_and_an_unknown_model(
    gate: str, ctl: ControllerHandle, cli: Any, monkeypatch: pytest.MonkeyPatch, home: Path,
    secrets: Secrets,
) -> None:  # fmt: skip
    code, out, err = cli("status", "no_such_model")
    assert code == 3 and "no_such_model" in err
    assert cli("pin", gate, "99")[0] == 3
    assert cli("events", "no_such_model")[0] == 3

    code, out, err = cli("status", "--controller", f"http://127.0.0.1:{free_port()}")
    assert code == 4 and "cannot reach the controller" in err and "try again" in err

    monkeypatch.setenv("SIGSERVE_ADMIN_TOKEN", "not-the-token")
    code, out, err = cli("pin", gate, "3")
    assert code == 5 and "SIGSERVE_ADMIN_TOKEN" in err
    assert "not-the-token" not in out + err and secrets.admin_token not in out + err
    assert ctl.model(gate)["default_version"] == "1"

    # Without the variable, the token is the local stack's, from $SIGSERVE_HOME/secrets.json.
    monkeypatch.delenv("SIGSERVE_ADMIN_TOKEN")
    monkeypatch.setenv("SIGSERVE_HOME", str(home))
    code, out, err = cli("status", gate)
    assert code == 0, err
    assert secrets.admin_token not in out + err

"""Requirement lines carrying a credential (issue 17): cut where the controller reads them, the
version quarantined with a reason that says where credentials belong, and the credential in
nothing the controller keeps, publishes (the routing table, the admin API) or logs."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import pytest

from controller.database import make_engine, migrate
from controller.environment import (
    ArtifactEnvironment,
    EnvironmentPolicy,
    check_environment,
)
from controller.environment_secrets import carries_credential, redact, redacted_facts
from controller.own_environments import assign
from controller.reconciler import Reconciler
from controller.store import Store
from tests.unit.test_controller_own_environments import PROVING, Registry

TOKEN = "ghp_S3cretT0ken"


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (f"tiny-pkg @ git+https://{TOKEN}@github.com/org/tiny.git@v1#egg=tiny",
         "tiny-pkg @ git+https://***@github.com/org/tiny.git@v1#egg=tiny"),
        (f"-e git+https://oauth2:{TOKEN}@gitlab.example/org/tiny.git#egg=tiny",
         "-e git+https://***@gitlab.example/org/tiny.git#egg=tiny"),
        (f"--index-url https://alice:{TOKEN}@pypi.example/simple",
         "--index-url https://***@pypi.example/simple"),
        (f"--extra-index-url=https://alice:p@ss{TOKEN}@pypi.example/simple/",
         "--extra-index-url=https://***@pypi.example/simple/"),
        (f"tiny @ https://files.example/tiny-1.0.whl?X-Amz-Signature={TOKEN}&x=1",
         "tiny @ https://files.example/tiny-1.0.whl?X-Amz-Signature=***&x=1"),
    ],
)  # fmt: skip
def test_a_credential_is_cut_from_the_line(line: str, shown: str) -> None:
    assert redact(line) == shown and carries_credential(line)
    assert redact(shown) == shown and carries_credential(shown)  # read again from the store


@pytest.mark.parametrize(
    "line",
    [
        "tiny-pkg==0.3.1",
        "tiny @ git+ssh://git@github.com/org/tiny.git",  # the SSH login, not a secret
        "--index-url https://${PYPI_USER}:${PYPI_TOKEN}@pypi.example/simple",  # expanded by pip
        "tiny @ https://files.example/tiny-1.0.whl#sha256=abc",
    ],
)
def test_what_is_no_credential_stays(line: str) -> None:
    assert redact(line) == line and not carries_credential(line)


LINES = [
    "mlflow==3.17.2",
    f"--index-url https://alice:{TOKEN}@pypi.example/simple",
    f"tiny-pkg @ git+https://{TOKEN}@github.com/org/tiny.git",
]


@pytest.mark.parametrize("policy", [EnvironmentPolicy.ISOLATE, EnvironmentPolicy.SHARED])
def test_a_version_whose_requirements_carry_a_credential_is_blocked_saying_where_they_go(
    policy: EnvironmentPolicy,
) -> None:
    artifact = ArtifactEnvironment(LINES, "3.11.9", False)
    assert TOKEN not in json.dumps(asdict(artifact))  # what the store keeps of the facts
    verdict = check_environment(artifact, PROVING, policy)
    assert len(verdict.blocking) == 2
    shown = "'--index-url https://***@pypi.example/simple' carries a credential"
    assert shown in verdict.blocking[0]
    assert all("UV_INDEX_URL" in r and "pip.conf" in r for r in verdict.blocking)
    # Not a package to build an environment of its own from.
    assert verdict.missing == [] and assign(verdict, PROVING, None) is None
    assert TOKEN not in repr(verdict)


def test_nothing_the_controller_publishes_or_logs_carries_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    store = Store(engine)
    Reconciler(store, Registry({"1": ["mlflow==3.17.2"], "2": LINES}), PROVING,
               write_back=False).reconcile("m", "resync")  # fmt: skip
    table = store.publish()
    entry = table.models["m"].versions["2"]
    assert entry.state == "quarantined" and entry.environment is None
    assert any("carries a credential" in r for r in entry.reasons)
    record = store.load_model("m")
    assert record is not None
    assert TOKEN not in table.model_dump_json()
    assert TOKEN not in json.dumps(asdict(record.versions["2"]), default=str)
    assert TOKEN not in caplog.text


def test_facts_stored_before_the_cut_are_shown_cut() -> None:
    stored = {"requirements": LINES, "python_version": "3.11.9", "pickled": False}
    shown = redacted_facts(stored)
    assert shown is not None and TOKEN not in json.dumps(shown)
    assert shown["requirements"][0] == "mlflow==3.17.2" and shown["pickled"] is False
    assert redacted_facts(None) is None

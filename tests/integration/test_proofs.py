"""Proof before the first request (issue 17), on the session's real stack: each version that
passes the gate is loaded by a serving replica and called on its own input example before it
goes live; one that raises on it, or answers a column its outputs lack, is quarantined with the
cause and never answers a client 200; one without an example is live, "not exercised".

Clients are polled from the moment the version is registered: every answer they get before the
decision is a 404 (the model not in the table yet) or a 503 (pending), never a 200.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.integration.conftest import (
    ControllerHandle,
    problem,
    register_echo,
    serve_status,
    wait_for,
)

ZOO = Path(__file__).parents[1] / "zoo" / "models"
BEING_PROVEN = "being proven: loaded and called on its input example before its first request"


def _register_from_code(name: str, code: Path) -> str:
    import mlflow
    from mlflow.models import infer_signature

    example = pd.DataFrame({"prompt": ["hello"]})
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(code), input_example=example,
            signature=infer_signature(example, pd.DataFrame({"answer": ["HELLO"]})),
            pip_requirements=[], registered_model_name=name,
        )  # fmt: skip
    return str(info.registered_model_version)


def _decided(ctl: ControllerHandle, name: str, version: str, serving_url: str
             ) -> tuple[dict[str, Any], list[int]]:
    """Poll a client and the controller until the version is decided; the version's record and
    every status the client got on the way."""
    statuses: list[int] = []

    def decided() -> dict[str, Any] | None:
        statuses.append(serve_status(serving_url, name, version).status_code)
        r = httpx.get(f"{ctl.url}/admin/models/{name}", headers=ctl.admin)
        if r.status_code != 200:
            return None
        found = next((v for v in r.json()["versions"] if v["version"] == version), None)
        return found if found and found["state"] in ("live", "quarantined") else None

    record: dict[str, Any] = wait_for(decided, 90, 0.05)
    return record, statuses


def _answer(serving_url: str, name: str, version: str | None, status: int) -> httpx.Response:
    """The client's answer once it is ``status`` (the replica may hold the older table)."""
    answer: httpx.Response = wait_for(
        lambda: r if (r := serve_status(serving_url, name, version)).status_code == status
        else None, 30, 0.05)  # fmt: skip
    return answer


def _never_answered(serving_url: str, name: str, version: str, statuses: list[int]) -> None:
    # Never 200; 409 only on the poll made once the controller had decided.
    assert set(statuses[:-1]) <= {404, 503} and statuses[-1] in (404, 409, 503), statuses
    # Once quarantined, its 409 carries the cause, by version and by default alike.
    for asked in (version, None):
        refused = _answer(serving_url, name, asked, 409)
        assert "failed its proof" in problem(refused)["detail"]


def test_a_version_that_raises_on_its_own_example_is_quarantined_with_the_cause(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "proof_raises"
    version = _register_from_code(name, ZOO / "raises.py")
    record, statuses = _decided(ctl, name, version, serving_url)
    assert record["state"] == "quarantined", record
    (reason,) = record["reasons"]
    assert reason.startswith("failed its proof on serving (replica "), reason
    assert "ValueError: cannot score 1 rows: the model was never fitted" in reason
    assert "Traceback" not in reason
    _never_answered(serving_url, name, version, statuses)


def test_a_version_answering_a_column_its_outputs_lack_is_quarantined_naming_it(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "proof_extra_column"
    version = _register_from_code(name, ZOO / "extra_column.py")
    record, statuses = _decided(ctl, name, version, serving_url)
    assert record["state"] == "quarantined", record
    assert "'debug'" in record["reasons"][0] and "output schema lacks" in record["reasons"][0]
    _never_answered(serving_url, name, version, statuses)


def test_a_good_version_goes_live_after_its_proof_and_answers(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "proof_good"
    version = register_echo(name, tag="good", input_example=True)
    record, statuses = _decided(ctl, name, version, serving_url)
    assert (record["state"], record["warnings"]) == ("live", []), record
    # Only the last poll, made once it was live, may have been answered.
    assert 200 not in statuses[:-1], statuses
    assert _answer(serving_url, name, None, 200).json() == [{"answer": "good:hi"}]


def test_a_version_without_an_example_is_live_and_not_exercised(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "proof_no_example"
    version = register_echo(name, tag="bare")
    record, _ = _decided(ctl, name, version, serving_url)
    assert record["state"] == "live", record
    assert "not exercised: it was logged without an input example" in record["warnings"]


def test_a_second_version_is_pending_while_proven_and_the_default_keeps_answering(
    serving_url: str, ctl: ControllerHandle
) -> None:
    name = "proof_second"
    register_echo(name, tag="one", input_example=True)
    wait_for(lambda: serve_status(serving_url, name).status_code == 200, 60, 0.05)
    second = register_echo(name, tag="two", input_example=True)
    seen: set[str] = set()

    def proven() -> bool:
        # The default answers throughout; the new version is 503 (pending) until proven.
        assert serve_status(serving_url, name).json() == [{"answer": "one:hi"}]
        state = ctl.state_of(name, second)
        seen.add(str(state))
        return state == "live"

    wait_for(proven, 60, 0.02)
    assert "quarantined" not in seen
    pin = httpx.put(f"{ctl.url}/admin/models/{name}/default", json={"version": second},
                    headers=ctl.admin)  # fmt: skip
    assert pin.status_code == 200, pin.text


# Measurements, run on purpose and never counted in `make test` (the `load` marker deselects
# them there): pytest -m load tests/integration/test_proofs.py -s, with
# SIGSERVE_DEFAULT_PROOF=off in the environment to compare (docs/benchmarks.md).
MEASURE = pytest.mark.load


def _to_first_200(serving_url: str, register: Callable[[str], str], names: list[str],
                  body: dict[str, Any]) -> list[float]:
    """Registration (the registry's own timestamp) -> the first 200 of each new model."""
    from mlflow import MlflowClient

    took = []
    for name in names:
        version = register(name)
        created = MlflowClient().get_model_version(name, version).creation_timestamp / 1000
        wait_for(lambda n=name: serve_status(serving_url, n, body=body).status_code == 200,
                 120, 0.01)
        took.append(time.time() - created)
    proof = os.environ.get("SIGSERVE_DEFAULT_PROOF", "on")
    print(f"\n[figure] registration -> first 200, {names[0].rsplit('_', 1)[0]}, proof {proof}: "
          f"median {statistics.median(took):.3f} s, each {[round(t, 3) for t in took]}")
    return took


@MEASURE
def test_registration_to_first_200_small_pyfunc(serving_url: str) -> None:
    tag = os.environ.get("SIGSERVE_DEFAULT_PROOF", "on")
    names = [f"proof_timing_{tag}_{time.time_ns()}_{i}" for i in range(7)]
    took = _to_first_200(
        serving_url, lambda n: register_echo(n, tag="t", input_example=True), names,
        {"prompt": "hi"},
    )
    assert statistics.median(took) < 10


@MEASURE
def test_registration_to_first_200_minilm(serving_url: str) -> None:
    from sigserve.demo.register import log_embedding_version, minilm_model_dir

    directory = minilm_model_dir()
    tag = os.environ.get("SIGSERVE_DEFAULT_PROOF", "on")
    names = [f"proof_minilm_{tag}_{time.time_ns()}_{i}" for i in range(3)]
    took = _to_first_200(
        serving_url, lambda n: log_embedding_version(n, model_dir=directory), names,
        {"text": "a cat sits on the mat"},
    )
    assert statistics.median(took) < 60

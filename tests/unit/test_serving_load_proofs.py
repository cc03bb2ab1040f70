"""A replica's proof of a version (issue 17): real MLflow models saved on disk, loaded by the
real loader and called on their own input example; the prover's scheduling with a fake loader
and reporter; the report's wire format through an ``httpx.MockTransport``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from mlflow.models import infer_signature
from mlflow.pyfunc import PythonModel, save_model

from serving.load_reports import LoadFailureReporter
from serving.loader import LoadedModel, PyfuncLoader
from serving.proofs import Proof, Prover, prove
from serving.resolve import Target, checked_artifact
from serving.table_source import TableSource
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState

EXAMPLE = pd.DataFrame({"prompt": ["hello"]})
SIGNATURE = infer_signature(EXAMPLE, pd.DataFrame({"answer": ["HELLO"]}))


class Upper(PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return pd.DataFrame({"answer": [p.upper() for p in model_input["prompt"]]})


class Raises(PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        raise ValueError("the model was never fitted\nTraceback-like second line")


class ExtraColumn(PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return pd.DataFrame({"answer": ["X"], "debug": ["len=5"]})


def saved(directory: Path, name: str, model: PythonModel, *, example: bool = True
          ) -> VersionEntry:
    path = directory / name
    save_model(path=str(path), python_model=model, pip_requirements=[], signature=SIGNATURE,
               input_example=EXAMPLE if example else None)  # fmt: skip
    digest = hashlib.sha256((path / "MLmodel").read_bytes()).hexdigest()
    return VersionEntry(version="1", state=VersionState.PENDING, source=path.as_uri(),
                        mlmodel_digest=digest, signature=SIGNATURE.to_dict(),
                        awaiting_proof=True)  # fmt: skip


@pytest.fixture(scope="module")
def entries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, VersionEntry]:
    directory = tmp_path_factory.mktemp("proofs")
    return {
        "good": saved(directory, "good", Upper()),
        "raises": saved(directory, "raises", Raises()),
        "extra": saved(directory, "extra", ExtraColumn()),
        "bare": saved(directory, "bare", Upper(), example=False),
    }


def target(name: str, entry: VersionEntry) -> Target:
    model = ModelEntry(name=name, default_version="1", versions={"1": entry})
    return Target(model, entry, checked_artifact(name, entry))


def proven(name: str, entry: VersionEntry) -> Proof:
    t = target(name, entry)
    loaded = asyncio.run(PyfuncLoader().load(t.model_id, t.artifact))
    try:
        return prove(loaded, t)
    finally:
        loaded.close()


def test_a_model_that_answers_its_example_within_its_outputs_passes(
    entries: dict[str, VersionEntry],
) -> None:
    proof = proven("good", entries["good"])
    assert (proof.outcome, proof.exercised, proof.cause) == ("passed", True, None)
    assert proof.mlmodel_digest == entries["good"].mlmodel_digest


def test_a_model_that_raises_on_its_example_fails_with_the_type_and_first_line(
    entries: dict[str, VersionEntry],
) -> None:
    proof = proven("raises", entries["raises"])
    assert (proof.outcome, proof.cause) == ("failed", "ValueError: the model was never fitted")


def test_an_answer_with_a_column_the_outputs_lack_fails_naming_the_column(
    entries: dict[str, VersionEntry],
) -> None:
    proof = proven("extra", entries["extra"])
    assert proof.outcome == "failed"
    assert proof.cause is not None and "'debug'" in proof.cause and "'answer'" in proof.cause


def test_a_model_without_an_example_is_loaded_and_not_exercised(
    entries: dict[str, VersionEntry],
) -> None:
    proof = proven("bare", entries["bare"])
    assert (proof.outcome, proof.exercised, proof.cause) == ("passed", False, None)


def table(revision: int, *entries: tuple[str, VersionEntry]) -> RoutingTable:
    return RoutingTable(revision=revision, models={
        name: ModelEntry(name=name, default_version="1", versions={"1": entry})
        for name, entry in entries
    })  # fmt: skip


async def until(check: Callable[[], bool], deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < end, "not within the deadline"
        await asyncio.sleep(0.005)


class Recorder:
    """A fake loader and reporter: what was loaded (and how many at once), what was reported."""

    def __init__(self, deliver: list[bool] | None = None) -> None:
        self.loads: list[str] = []
        self.reports: list[Proof] = []
        self.running = 0
        self.most = 0
        self.deliver = deliver or []

    async def load(self, t: Target, default: bool) -> LoadedModel:
        self.running += 1
        self.most = max(self.most, self.running)
        self.loads.append(t.model.name)
        await asyncio.sleep(0)
        self.running -= 1
        return LoadedModel(_Answers(), Path("/nonexistent"))

    async def report(self, proof: Proof) -> bool:
        self.reports.append(proof)
        return self.deliver.pop(0) if self.deliver else True


class _Answers:
    """A loaded model without an example (so a proof only loads it)."""

    class metadata:  # MLflow's attribute name
        @staticmethod
        def get_serving_input(path: str) -> None:
            return None

    input_example = None


def test_the_prover_proves_each_awaiting_version_once_one_at_a_time(
    entries: dict[str, VersionEntry],
) -> None:
    async def run() -> Recorder:
        seen = Recorder()
        prover = Prover(seen.load, seen.report, timeout_s=lambda t: 5.0)
        live = entries["good"].model_copy(update={"state": VersionState.LIVE,
                                                  "awaiting_proof": False})
        prover.offer(table(1, ("a", entries["good"]), ("b", entries["bare"]), ("c", live)))
        await until(lambda: len(seen.reports) == 2)
        # The same versions in a later table: proven already, not again.
        prover.offer(table(2, ("a", entries["good"]), ("b", entries["bare"])))
        await asyncio.sleep(0.05)
        await prover.stop()
        return seen

    seen = asyncio.run(run())
    assert sorted(seen.loads) == ["a", "b"]  # never the live one
    assert seen.most == 1
    assert [(p.model, p.outcome, p.exercised) for p in seen.reports] == [
        ("a", "passed", False), ("b", "passed", False)
    ]


def test_a_proof_the_controller_did_not_get_is_sent_again_without_proving_again(
    entries: dict[str, VersionEntry],
) -> None:
    async def run() -> Recorder:
        seen = Recorder(deliver=[False, True])
        prover = Prover(seen.load, seen.report, timeout_s=lambda t: 5.0, retry_first_s=0.01)
        prover.offer(table(1, ("a", entries["good"])))
        await until(lambda: len(seen.reports) == 2)
        await prover.stop()
        assert prover.done == {target("a", entries["good"]).model_id}
        return seen

    seen = asyncio.run(run())
    assert seen.loads == ["a"]
    assert seen.reports[0] == seen.reports[1]


def test_a_load_that_fails_is_tried_again_later_and_nothing_is_reported(
    entries: dict[str, VersionEntry],
) -> None:
    async def run() -> list[str]:
        tries: list[str] = []

        async def failing(t: Target, default: bool) -> LoadedModel:
            tries.append(t.model.name)
            raise RuntimeError("the artifact store is down")

        reports: list[Proof] = []

        async def report(proof: Proof) -> bool:
            reports.append(proof)
            return True

        prover = Prover(failing, report, timeout_s=lambda t: 5.0, retry_first_s=0.01)
        prover.offer(table(1, ("a", entries["good"])))
        await until(lambda: len(tries) >= 3)
        await prover.stop()
        assert reports == []
        return tries

    assert set(asyncio.run(run())) == {"a"}


def test_a_table_source_shows_each_table_it_takes_to_its_watcher() -> None:
    seen: list[int] = []
    source = TableSource("http://controller.invalid", watch=lambda t: seen.append(t.revision))
    assert source.offer(RoutingTable(revision=3))
    assert not source.offer(RoutingTable(revision=2))  # older: not taken, not shown
    assert seen == [3]


def test_a_proof_report_is_posted_with_the_serving_token_and_a_refusal_is_final() -> None:
    sent: list[tuple[str, dict[str, Any], str]] = []
    statuses = [503, 200, 409]

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, json.loads(request.content),
                     request.headers["authorization"]))  # fmt: skip
        return httpx.Response(statuses.pop(0), json={"recorded": True, "state": "live"})

    reporter = LoadFailureReporter("http://controller", "serving-token-0123456789", "r1",
                                   backoff_s=0.001, transport=httpx.MockTransport(answer))
    proof = Proof("m", "2", "a" * 64, "failed", True, "ValueError: never fitted")

    async def run() -> tuple[bool, bool]:
        return await reporter.send_proof(proof), await reporter.send_proof(proof)

    first, refused = asyncio.run(run())
    assert (first, refused) == (True, True)  # 503 retried then taken; 409 stale: done with it
    path, body, auth = sent[0]
    assert path == "/serving/proofs" and auth == "Bearer serving-token-0123456789"
    assert body == {"model": "m", "version": "2", "mlmodel_digest": "a" * 64,
                    "outcome": "failed", "exercised": True,
                    "cause": "ValueError: never fitted", "replica": "r1"}  # fmt: skip


def test_an_over_budget_or_unreachable_controller_leaves_the_proof_to_send_again() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    reporter = LoadFailureReporter("http://controller", "t" * 20, "r1", attempts=1,
                                   burst=1, per_minute=0.001, transport=httpx.MockTransport(down))
    proof = Proof("m", "2", "a" * 64, "passed", True)

    async def run() -> tuple[bool, bool]:
        return await reporter.send_proof(proof), await reporter.send_proof(proof)

    assert asyncio.run(run()) == (False, False)


"""A version that needs a package the shared serving environment lacks (issue 17), served from
an environment of its own on the session's real Ray: the serving side (``serving.environments``)
driven as a replica drives it, on artifacts logged to the real MLflow server.

The model's ``predict`` imports ``roman`` (pure Python, from PyPI), which the serving venv does
not have (asserted). Its environment is built once (Ray's uv ``runtime_env``: a clone of the
serving venv plus ``roman==5.2``), the version is loaded there with the loader's checks, answers
what ``roman.toRoman`` gives (the package's documented values, computed here without it) and
passes its proof there; a second version with the same requirements, asked for by another
manager (another replica, or this one restarted), reuses the same environment: no second build,
the same process, two models loaded in it. A requirement that does not resolve fails in about a
second with uv's reason, and an environment no table names any more is let go. An environment
that inherits nothing (kind ``isolated``) is a venv of the version's own ``requirements.txt``
lines, the model answering from a host process there.

In the zoo (``make zoo``): the first build clones the 2.7 GB serving venv (~21 s measured), over
what ``make test`` allows one test; ``tests/unit/test_serving_environments.py`` keeps the path
without Ray (both ends in one process) in ``make test``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from serving.environment_builds import EnvironmentBuildFailed, actor_name, namespace
from serving.environments import EnvironmentManager
from serving.loader import LoadFailed
from serving.model_ids import Artifact
from serving.proofs import prove
from serving.resolve import Target
from tests.zoo.conftest import Figures
from wire.routing_table import (
    EnvironmentSpec,
    ModelEntry,
    RoutingTable,
    VersionEntry,
    VersionState,
)

MODEL = Path(__file__).parent / "models" / "roman_numerals.py"
REQUIREMENTS = ["roman==5.2"]
# roman.toRoman's documented answers.
EXPECTED = {1: "I", 4: "IV", 14: "XIV", 1994: "MCMXCIV", 2026: "MMXXVI", 3999: "MMMCMXCIX"}


def _spec(requirements: list[str]) -> EnvironmentSpec:
    # A digest of this run's own: the environment is built in this test, never found from
    # another test's.
    blob = "\n".join(["layered", *requirements, uuid.uuid4().hex])
    return EnvironmentSpec(digest=hashlib.sha256(blob.encode()).hexdigest(), kind="layered",
                           requirements=requirements, reason="needs roman")  # fmt: skip


def _logged(name: str, spec: EnvironmentSpec) -> Target:
    """A version of ``name`` logged to the real MLflow server, bound as the table binds it."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    example = pd.DataFrame({"n": [4, 14]})
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(MODEL), input_example=example,
            signature=infer_signature(example, pd.DataFrame({"numeral": ["IV", "XIV"]})),
            pip_requirements=REQUIREMENTS, registered_model_name=name,
        )  # fmt: skip
    version = str(info.registered_model_version)
    # Where the controller binds a version (controller.registry): its download URI.
    source = str(MlflowClient().get_model_version_download_uri(name, version))
    mlmodel = Path(mlflow.artifacts.download_artifacts(f"{source.rstrip('/')}/MLmodel"))
    entry = VersionEntry(
        version=version, state=VersionState.PENDING, source=source,
        mlmodel_digest=hashlib.sha256(mlmodel.read_bytes()).hexdigest(),
        signature=info.signature.to_dict(), awaiting_proof=True, environment=spec,
    )  # fmt: skip
    model = ModelEntry(name=name, default_version=version, versions={version: entry})
    return Target(model, entry, Artifact(source, entry.mlmodel_digest, None, spec))


def _table(revision: int, *targets: Target) -> RoutingTable:
    return RoutingTable(revision=revision, models={t.model.name: t.model for t in targets})


def _exists(name: str, app: str) -> bool:
    import ray

    try:
        ray.get_actor(name, namespace=namespace(app))
    except ValueError:
        return False
    return True


def test_a_version_needing_a_package_the_shared_environment_lacks_is_served_from_its_own(
    serving_url: str, figures: Figures
) -> None:
    assert importlib.util.find_spec("roman") is None, "the test needs roman to be absent here"
    spec = _spec(REQUIREMENTS)
    name = f"roman-{uuid.uuid4().hex[:6]}"
    first, second = _logged(name, spec), _logged(name, spec)
    assert first.artifact.key != second.artifact.key
    app = f"e2-{uuid.uuid4().hex[:6]}"

    async def scenario() -> dict[str, Any]:
        replica = EnvironmentManager(app, timeout_s=600, concurrency=1)
        started = time.perf_counter()
        await replica.build(spec)
        built_s = time.perf_counter() - started
        loaded = await replica.load(first.artifact)
        numbers = pd.DataFrame({"n": list(EXPECTED)})
        answer = await asyncio.to_thread(loaded.model.predict, numbers)
        proof = await asyncio.to_thread(prove, loaded, first)
        one_row = pd.DataFrame({"n": [14]})
        calls = []
        for _ in range(20):
            began = time.perf_counter()
            await asyncio.to_thread(loaded.model.predict, one_row)
            calls.append(time.perf_counter() - began)

        # Another replica (or this one restarted): the same environment, no build.
        other = EnvironmentManager(app, timeout_s=600, concurrency=1)
        started = time.perf_counter()
        await other.build(spec)
        reused_s = time.perf_counter() - started
        again = await other.load(second.artifact)
        answer2 = await asyncio.to_thread(again.model.predict, numbers)

        # A replica restarted: its first load finds the environment running, nothing built.
        restarted = EnvironmentManager(app, timeout_s=600, concurrency=1)
        third = await restarted.load(first.artifact)
        answer3 = await asyncio.to_thread(third.model.predict, numbers)
        # A load never waits for a build: an environment not built answers 503 at once.
        started = time.perf_counter()
        with pytest.raises(LoadFailed, match="being built"):
            await restarted.load(Artifact(first.artifact.source, first.artifact.mlmodel_digest,
                                          None, _spec(["roman==99.0"])))  # fmt: skip
        unbuilt_s = time.perf_counter() - started

        import ray

        actor = ray.get_actor(actor_name(spec.digest), namespace=namespace(app))
        info = await actor.info.remote()

        # A requirement that does not resolve: a failed build with uv's reason, at once.
        started = time.perf_counter()
        with pytest.raises(EnvironmentBuildFailed) as failed:
            await replica.build(_spec(["roman==99.0"]))
        failed_s = time.perf_counter() - started

        # Let go once no table names it: named, then gone.
        replica.offer(_table(1, first))
        replica.offer(_table(2))
        for _ in range(200):
            if not await asyncio.to_thread(_exists, actor_name(spec.digest), app):
                break
            await asyncio.sleep(0.05)
        gone = not await asyncio.to_thread(_exists, actor_name(spec.digest), app)
        for model in (loaded, again, third):
            model.close()
        return {"built_s": built_s, "reused_s": reused_s, "failed_s": failed_s,
                "unbuilt_s": unbuilt_s, "answer3": answer3, "calls": sorted(calls),
                "answer": answer, "answer2": answer2, "proof": proof, "info": info,
                "builds": (replica.builds_started, other.builds_started,
                           restarted.builds_started),
                "failure": failed.value.cause, "gone": gone}  # fmt: skip

    seen = asyncio.run(scenario())
    figures("first build (s)", seen["built_s"])
    figures("reuse by another replica (s)", seen["reused_s"])
    figures("a requirement that does not resolve (s)", seen["failed_s"])
    expected = pd.DataFrame({"numeral": list(EXPECTED.values())})
    pd.testing.assert_frame_equal(seen["answer"], expected)
    pd.testing.assert_frame_equal(seen["answer2"], expected)
    pd.testing.assert_frame_equal(seen["answer3"], expected)
    figures("a load of an environment not built, answered (s)", seen["unbuilt_s"])
    figures("one-row predict through the environment, median (s)", seen["calls"][10])
    proof = seen["proof"]
    assert (proof.outcome, proof.exercised, proof.environment_digest) == (
        "passed", True, spec.digest
    ), proof  # fmt: skip
    # One build for both versions: the second manager found the environment.
    assert seen["builds"] == (1, 0, 0)
    assert seen["info"]["loads"] == 2 and seen["info"]["digest"] == spec.digest
    assert "no version of roman==99.0" in seen["failure"], seen["failure"]
    assert "Traceback" not in seen["failure"]
    assert seen["gone"], "the environment no table names was not let go"


def test_a_version_in_an_environment_that_inherits_nothing_answers_from_its_own_venv(
    serving_url: str, figures: Figures
) -> None:
    """Kind ``isolated``: a venv of the version's own requirements alone (its MLflow, pandas
    and roman, as its ``requirements.txt`` lists them), the model in a host process there. The
    serving venv lacks roman, so a right answer is the proof it ran there."""
    import mlflow

    assert importlib.util.find_spec("roman") is None
    logged = _logged(f"roman-iso-{uuid.uuid4().hex[:6]}", _spec(REQUIREMENTS))
    listed = Path(mlflow.artifacts.download_artifacts(
        f"{logged.artifact.source.rstrip('/')}/requirements.txt")).read_text()  # fmt: skip
    lines = [line.strip() for line in listed.splitlines() if line.strip()]
    assert "roman==5.2" in lines and any(line.startswith("mlflow") for line in lines), lines
    blob = "\n".join(["isolated", *lines, uuid.uuid4().hex])
    spec = EnvironmentSpec(digest=hashlib.sha256(blob.encode()).hexdigest(), kind="isolated",
                           requirements=lines, reason="another major")  # fmt: skip
    entry = logged.version.model_copy(update={"environment": spec})
    model = logged.model.model_copy(update={"versions": {entry.version: entry}})
    target = Target(model, entry, Artifact(logged.artifact.source, entry.mlmodel_digest or "",
                                           None, spec))  # fmt: skip
    app = f"e2-{uuid.uuid4().hex[:6]}"

    async def scenario() -> dict[str, Any]:
        replica = EnvironmentManager(app, timeout_s=900, concurrency=1)
        started = time.perf_counter()
        await replica.build(spec)
        built_s = time.perf_counter() - started
        loaded = await replica.load(target.artifact)
        answer = await asyncio.to_thread(loaded.model.predict, pd.DataFrame({"n": list(EXPECTED)}))
        proof = await asyncio.to_thread(prove, loaded, target)
        loaded.close()
        replica.offer(_table(1, target))
        replica.offer(_table(2))
        return {"built_s": built_s, "answer": answer, "proof": proof}

    seen = asyncio.run(scenario())
    figures("isolated: build (venv of its own requirements, s)", seen["built_s"])
    pd.testing.assert_frame_equal(
        seen["answer"], pd.DataFrame({"numeral": list(EXPECTED.values())})
    )
    proof = seen["proof"]
    assert (proof.outcome, proof.environment_digest) == ("passed", spec.digest), proof

"""Environments of a version's own (issue 17), the parts without Ray: what crosses the boundary,
the package index a build uses, a failed build's reason, both ends of a served model (the host
in this process, real MLflow models saved on disk), the prover's build step and the report."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from mlflow.pyfunc import PythonModel, save_model

from serving.environment_builds import (
    EnvironmentBuildFailed,
    index_settings,
    resolver_reason,
)
from serving.environment_codec import decode, encode
from serving.environment_host import EnvironmentHost, loaded_from
from serving.load_reports import LoadFailureReporter
from serving.loader import LoadedModel, LoadFailed, NotChecked
from serving.model_ids import Artifact
from serving.proofs import Proof, Prover, prove
from serving.resolve import Target, checked_artifact
from wire.routing_table import (
    EnvironmentSpec,
    ModelEntry,
    RoutingTable,
    VersionEntry,
    VersionState,
)

LAYERED = EnvironmentSpec(digest="ab" * 32, kind="layered", requirements=["roman==5.2"])
ISOLATED = EnvironmentSpec(digest="cd" * 32, kind="isolated", requirements=["mlflow==2.22.0"])


# What crosses the boundary


def test_frames_arrays_and_json_values_come_back_equal() -> None:
    frame = pd.DataFrame({
        "n": [1, 2], "x": [0.5, None], "s": ["a", "b"], "b": [True, False],
        "t": pd.to_datetime(["2026-01-01", "2026-01-02"]),
    })  # fmt: skip
    pd.testing.assert_frame_equal(decode(encode(frame)), frame)
    series = pd.Series([1.5, 2.5], name="score")
    pd.testing.assert_series_equal(decode(encode(series)), series)
    tensor = np.arange(6, dtype=np.float32).reshape(2, 3)
    back = decode(encode(tensor))
    assert back.dtype == np.float32 and back.shape == (2, 3) and (back == tensor).all()
    words = np.array(["a", "bc"], dtype=object)
    assert decode(encode(words)).tolist() == ["a", "bc"]
    nested = {"ids": np.array([1, 2]), "rows": [{"a": 1, "b": "x"}], "none": None}
    out = decode(encode(nested))
    assert out["ids"].tolist() == [1, 2] and out["rows"] == [{"a": 1, "b": "x"}]
    assert out["none"] is None
    assert decode(encode(np.float64(2.5))) == 2.5
    day = datetime.date(2026, 12, 5)
    assert decode(encode(day)) == day


def test_what_is_neither_data_nor_json_is_refused_naming_its_type() -> None:
    class Secret:
        pass

    with pytest.raises(TypeError, match="Secret cannot be sent"):
        encode({"x": Secret()})


def test_nothing_crosses_pickled() -> None:
    encoded = encode({"frame": pd.DataFrame({"a": [1]}), "x": np.zeros(2)})
    blob = json.dumps(encoded, default=lambda b: b.hex())  # only JSON values and bytes
    assert "frame" in blob


# The package index


def test_the_machines_pip_settings_become_uv_variables_never_options(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nfind-links = /opt/wheels\n"
        "extra-index-url = file:///opt/pypi/simple file:///opt/more/simple\n"
        "cert = /etc/ssl/certs/ca.crt\n"
    )
    options, variables = index_settings({}, [tmp_path / "absent.conf", conf])
    # Never options: Ray's runtime-env agent logs the command lines it runs, and an index URL
    # may carry credentials.
    assert options == []
    assert variables == {
        "UV_EXTRA_INDEX_URL": "file:///opt/pypi/simple file:///opt/more/simple",
        "UV_FIND_LINKS": "/opt/wheels", "UV_INDEX_STRATEGY": "unsafe-best-match",
        "SSL_CERT_FILE": "/etc/ssl/certs/ca.crt",
    }  # fmt: skip
    # A variable wins over a file, as in pip.
    options, variables = index_settings({"PIP_INDEX_URL": "https://u:t@private/simple"}, [conf])
    assert options == [] and variables["UV_INDEX_URL"] == "https://u:t@private/simple"


def test_uv_variables_are_passed_on_and_win_over_pip(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://pip-index/simple\n")
    environ = {"UV_INDEX_URL": "https://uv-index/simple", "PIP_INDEX_URL": "https://p/simple"}
    assert index_settings(environ, [conf]) == ([], {"UV_INDEX_URL": "https://uv-index/simple"})


# A failed build, as a person reads it

RAY_FAILURE = """Failed to set up runtime environment.
Could not create the actor because its associated runtime env failed to be created.
[Node 192.0.2.2] Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/ray/_private/runtime_env/uv.py", line 240, in x
    await check_output_cmd(uv_install_cmd, logger=logger, cwd=cwd, env=pip_env)
ray._private.runtime_env.utils.SubprocessCalledProcessError: Run cmd[12] failed.
Last 50 lines of stdout:
    Using Python 3.11.7 environment at: /tmp/ray/session/runtime_resources/uv/db61/virtualenv
    error: No solution found when resolving dependencies
      cause: Because there is no version of roman==99.0 and you require roman==99.0, we can \
conclude that your requirements are unsatisfiable.
"""


def test_a_failed_build_is_told_in_uvs_words_without_the_traceback() -> None:
    reason = resolver_reason(RAY_FAILURE, ["roman==99.0"])
    assert reason == (
        "its environment (roman==99.0) could not be built: No solution found when resolving "
        "dependencies: Because there is no version of roman==99.0 and you require roman==99.0, "
        "we can conclude that your requirements are unsatisfiable."
    )
    assert "Traceback" not in reason and "/tmp/ray" not in reason


def test_a_failure_without_uvs_words_keeps_its_last_line() -> None:
    text = "Traceback (most recent call last):\n  File x\nOSError: [Errno 28] No space left"
    assert resolver_reason(text, ["a"]).endswith("OSError: [Errno 28] No space left")


# Both ends of a served model, the host in this process

EXAMPLE = pd.DataFrame({"n": [3, 14]})
SIGNATURE = infer_signature(EXAMPLE, pd.DataFrame({"answer": ["III", "XIV"]}))


class Numerals(PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        table = {3: "III", 14: "XIV", 5: "V"}
        return pd.DataFrame({"answer": [table[int(n)] for n in model_input["n"]]})


NUMERALS_CODE = """
import mlflow
import pandas as pd


class Numerals(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        table = {3: "III", 14: "XIV", 5: "V"}
        return pd.DataFrame({"answer": [table[int(n)] for n in model_input["n"]]})


mlflow.models.set_model(Numerals())
"""


class Raises(PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        raise KeyError("no numeral for 0\nsecond line")


def entry_for(directory: Path, name: str, model: PythonModel | str) -> VersionEntry:
    path = directory / name
    save_model(path=str(path), python_model=model, pip_requirements=[], signature=SIGNATURE,
               input_example=EXAMPLE)  # fmt: skip
    digest = hashlib.sha256((path / "MLmodel").read_bytes()).hexdigest()
    return VersionEntry(version="1", state=VersionState.PENDING, source=path.as_uri(),
                        mlmodel_digest=digest, signature=SIGNATURE.to_dict(),
                        awaiting_proof=True, environment=LAYERED)  # fmt: skip


def target_of(name: str, entry: VersionEntry) -> Target:
    model = ModelEntry(name=name, default_version="1", versions={"1": entry})
    return Target(model, entry, checked_artifact(name, entry))


def held(host: EnvironmentHost, artifact: Artifact, holder: str) -> LoadedModel:
    """What ``EnvironmentManager.load`` makes of the host's answer, with the host called here
    instead of through Ray (the same records cross)."""
    from serving.environment_errors import raise_error
    from serving.environment_host import artifact_record

    key = artifact.key
    answer = host.load(key, holder, json.loads(json.dumps(artifact_record(artifact))))
    if "error" in answer:
        raise_error(answer["error"])
    return loaded_from(answer["files"], lambda d, p: host.predict(key, d, p),
                       lambda: host.unload(key, holder))  # fmt: skip


def test_a_model_in_its_environment_answers_and_proves_as_one_loaded_here(
    tmp_path: Path,
) -> None:
    entry = entry_for(tmp_path, "numerals", Numerals())
    target = target_of("numerals", entry)
    host = EnvironmentHost(LAYERED.digest)
    loaded = held(host, target.artifact, "replica-1")
    answer = loaded.model.predict(pd.DataFrame({"n": [5]}))
    pd.testing.assert_frame_equal(answer, pd.DataFrame({"answer": ["V"]}))
    assert loaded.model.remote  # what a caller reads before calling it on its event loop
    pd.testing.assert_frame_equal(loaded.model.input_example, EXAMPLE)
    proof = prove(loaded, target)
    assert (proof.outcome, proof.exercised, proof.environment_digest) == (
        "passed", True, LAYERED.digest
    )  # fmt: skip
    # A second replica shares the model; it goes with its last holder.
    other = held(host, target.artifact, "replica-2")
    assert host.info()["loads"] == 1
    loaded.close()
    assert host.info()["held"] == {target.artifact.key: ["replica-2"]}
    other.close()
    assert host.info()["held"] == {}


def test_a_model_raising_in_its_environment_fails_its_proof_with_the_type_and_first_line(
    tmp_path: Path,
) -> None:
    entry = entry_for(tmp_path, "raises", Raises())
    target = target_of("raises", entry)
    loaded = held(EnvironmentHost(LAYERED.digest), target.artifact, "r")
    proof = prove(loaded, target)
    assert (proof.outcome, proof.cause) == ("failed", "KeyError: 'no numeral for 0\\nsecond line'")


def test_an_artifact_that_is_not_the_checked_one_is_refused_in_its_environment(
    tmp_path: Path,
) -> None:
    entry = entry_for(tmp_path, "numerals", Numerals())
    changed = entry.model_copy(update={"mlmodel_digest": "0" * 64})
    artifact = checked_artifact("numerals", changed)
    with pytest.raises(NotChecked, match="not 000000000000 the controller checked"):
        held(EnvironmentHost(LAYERED.digest), artifact, "r")


# The prover builds first


class Builds:
    def __init__(self, failure: str | None = None) -> None:
        self.built: list[str] = []
        self.failure = failure

    async def build(self, spec: EnvironmentSpec) -> None:
        self.built.append(spec.digest)
        if self.failure:
            raise EnvironmentBuildFailed(self.failure)


def prove_with(builds: Builds, entry: VersionEntry) -> tuple[list[Proof], list[str]]:
    proofs: list[Proof] = []
    loads: list[str] = []

    async def load(t: Target, default: bool) -> LoadedModel:
        loads.append(t.model_id)
        return held(EnvironmentHost(LAYERED.digest), t.artifact, "r")

    async def report(proof: Proof) -> bool:
        proofs.append(proof)
        return True

    async def run() -> None:
        prover = Prover(load, report, timeout_s=lambda t: 5.0, environments=builds)
        prover.offer(RoutingTable(revision=1, models={"m": target_of("m", entry).model}))
        for _ in range(500):
            if proofs:
                break
            await asyncio.sleep(0.01)
        await prover.stop()

    asyncio.run(run())
    return proofs, loads


def test_the_prover_builds_the_environment_then_proves_in_it(tmp_path: Path) -> None:
    builds = Builds()
    proofs, loads = prove_with(builds, entry_for(tmp_path, "m", Numerals()))
    assert builds.built == [LAYERED.digest] and len(loads) == 1
    assert [(p.outcome, p.environment_digest) for p in proofs] == [("passed", LAYERED.digest)]


def test_a_build_that_fails_is_a_failed_proof_with_its_reason_and_nothing_is_loaded(
    tmp_path: Path,
) -> None:
    reason = "its environment (roman==99.0) could not be built: No solution found"
    proofs, loads = prove_with(Builds(reason), entry_for(tmp_path, "m", Numerals()))
    assert loads == []
    assert [(p.outcome, p.cause, p.environment_digest) for p in proofs] == [
        ("failed", reason, LAYERED.digest)
    ]


def test_a_model_in_an_environment_that_inherits_nothing_runs_in_a_process_of_its_own(
    tmp_path: Path,
) -> None:
    import os
    import sys

    # From code: a pickled class of this test module would not import in another process.
    code = tmp_path / "numerals_code.py"
    code.write_text(NUMERALS_CODE)
    entry = entry_for(tmp_path, "numerals", str(code))
    target = target_of("numerals", entry.model_copy(update={"environment": ISOLATED}))
    # A venv built beforehand: the serving venv itself (it has MLflow and pyarrow); what is
    # tested is the host process and what crosses to it.
    host = EnvironmentHost(ISOLATED.digest, {"spec": ISOLATED.model_dump(mode="json"),
                                             "index": [[], {}], "timeout_s": 60,
                                             "venv": sys.prefix})  # fmt: skip
    loaded = held(host, target.artifact, "r")
    child = host._process._process.pid  # the host process, not this one
    assert child != os.getpid()
    answer = loaded.model.predict(pd.DataFrame({"n": [14, 3]}))
    pd.testing.assert_frame_equal(answer, pd.DataFrame({"answer": ["XIV", "III"]}))
    proof = prove(loaded, target)
    assert (proof.outcome, proof.environment_digest) == ("passed", ISOLATED.digest)
    with pytest.raises(KeyError, match="0"):
        loaded.model.predict(pd.DataFrame({"n": [0]}))  # the model's own error, by its name
    loaded.close()
    assert host.info()["held"] == {}
    host._process.close()


CHATTY_CODE = NUMERALS_CODE.replace(
    "    def predict(self, context, model_input, params=None):\n",
    "    def predict(self, context, model_input, params=None):\n"
    "        import os\n"
    "        os.write(1, b'{\"answer\": \"not yours\"}\\n')  # as C code or a subprocess would\n",
)


def test_what_a_model_writes_to_its_stdout_never_takes_an_answers_place(tmp_path: Path) -> None:
    # Answers travel on the host process's stdout, one line each: a line the model wrote there
    # itself would be read as an answer, and every later request would get the one before it.
    code = tmp_path / "chatty_code.py"
    code.write_text(CHATTY_CODE)
    entry = entry_for(tmp_path, "chatty", str(code))
    target = target_of("chatty", entry.model_copy(update={"environment": ISOLATED}))
    host = EnvironmentHost(ISOLATED.digest, {"spec": ISOLATED.model_dump(mode="json"),
                                             "index": [[], {}], "timeout_s": 60,
                                             "venv": sys.prefix})  # fmt: skip
    loaded = held(host, target.artifact, "r")
    for n, numeral in ((14, "XIV"), (3, "III"), (5, "V")):
        answer = loaded.model.predict(pd.DataFrame({"n": [n]}))
        pd.testing.assert_frame_equal(answer, pd.DataFrame({"answer": [numeral]}))
    loaded.close()
    host._process.close()


def test_the_proof_report_names_the_environment_only_when_there_is_one() -> None:
    bodies: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"recorded": True, "state": "live"})

    reporter = LoadFailureReporter("http://controller", "serving-token-0123456789", "r1",
                                   transport=httpx.MockTransport(answer))  # fmt: skip
    own = Proof("m", "1", "d" * 64, "passed", True, None, LAYERED.digest)
    shared = Proof("m", "2", "e" * 64, "passed", True)
    assert asyncio.run(reporter.send_proof(own)) and asyncio.run(reporter.send_proof(shared))
    assert bodies[0]["environment_digest"] == LAYERED.digest
    assert "environment_digest" not in bodies[1]


# The loader hands versions with an environment to it, and reports their failures as its own


class OneEnvironment:
    """``serving.loader.Environments`` with the host in this process (what ``Ray`` carries
    between them is the same records)."""

    def __init__(self) -> None:
        self.host = EnvironmentHost(LAYERED.digest)

    async def load(self, artifact: Artifact) -> LoadedModel:
        return held(self.host, artifact, "replica")


def test_the_loader_loads_a_version_with_an_environment_there_and_reports_its_failures(
    tmp_path: Path,
) -> None:
    from serving.loader import LoadFailure, PyfuncLoader

    entry = entry_for(tmp_path, "numerals", Numerals())
    good = target_of("numerals", entry)
    changed = target_of("numerals", entry.model_copy(update={"mlmodel_digest": "0" * 64}))
    reported: list[LoadFailure] = []
    environments = OneEnvironment()
    loader = PyfuncLoader(on_permanent_failure=reported.append, environments=environments)

    loaded = asyncio.run(loader.load(good.model_id, good.artifact))
    assert environments.host.info()["loads"] == 1  # loaded there, not here
    assert loaded.model.predict(pd.DataFrame({"n": [14]}))["answer"].tolist() == ["XIV"]
    with pytest.raises(Exception, match="the controller checked"):
        asyncio.run(loader.load(changed.model_id, changed.artifact))
    assert [(f.kind, f.environment_digest) for f in reported] == [
        ("artifact-mismatch", LAYERED.digest)
    ]
    # A replica that serves no environments does not load it here, and blames nobody.
    bare = PyfuncLoader(on_permanent_failure=reported.append)
    with pytest.raises(Exception, match="serves no environments"):
        asyncio.run(bare.load(good.model_id, good.artifact))
    assert len(reported) == 1


def test_a_load_failure_report_names_the_environment_only_when_there_is_one() -> None:
    from serving.loader import LoadFailure

    bodies: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"recorded": True, "state": "quarantined"})

    transport = httpx.MockTransport(answer)
    reporter = LoadFailureReporter("http://controller", "serving-token-0123456789", "r1",
                                   backoff_s=0.0, transport=transport)  # fmt: skip

    async def go() -> None:
        reporter.report(LoadFailure("m", "1", "d" * 64, "load-failed", "x", LAYERED.digest))
        reporter.report(LoadFailure("m", "2", "e" * 64, "load-failed", "y"))
        await reporter.drain()

    asyncio.run(go())
    assert bodies[0]["environment_digest"] == LAYERED.digest
    assert "environment_digest" not in bodies[1]


def test_an_environment_that_inherits_nothing_and_cannot_be_built_says_why_and_loads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A line uv cannot parse: it fails before any index is asked.
    spec = ISOLATED.model_copy(update={"requirements": ["not a requirement !!"]})
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    host = EnvironmentHost(spec.digest, {"spec": spec.model_dump(mode="json"),
                                         "index": [[], {}], "timeout_s": 60})  # fmt: skip
    failed = host.info()["failed"]
    assert failed.startswith("its environment (not a requirement !!) could not be built: "), failed
    assert "Traceback" not in failed and str(tmp_path) not in failed
    entry = entry_for(tmp_path, "numerals", Numerals())
    with pytest.raises(LoadFailed):
        held(host, target_of("numerals", entry).artifact, "r")

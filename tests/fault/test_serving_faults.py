"""Serving faults on the real stack (issue 8): a model replica killed while a client sends
requests, the serving app redeployed, versions whose artifacts cannot be loaded.

Each test records its figures (``figures``, printed with ``-s`` and in the run's summary): the
requests a client saw fail during the gap, how long until answers were correct again, how many
loads the fault cost.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from serving.loader import FAILED_LOAD_MEMORY_S
from tests.integration.broken_artifacts import log_echo, register_broken, register_broken_pickle
from tests.integration.conftest import (
    ControllerHandle,
    artifact_dir,
    loads_of,
    problem,
    register_echo,
    register_pickled,
    runner_loads,
    serve_status,
    server_call,
    wait_for,
)

pytestmark = pytest.mark.integration

CLIENTS = 4
ECHO_MODEL = Path(__file__).parents[1] / "integration" / "models" / "tagged_echo.py"


# A client that keeps asking ------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    sent: float  # time.monotonic() when the request went out
    took: float
    status: int | None  # None: no HTTP answer at all
    error: str  # "" when the answer was the expected one


class SteadyClient:
    """``clients`` threads, each on its own connection, posting one body in a loop."""

    def __init__(self, url: str, body: Any, expect: Any, *, clients: int = CLIENTS,
                 pause_s: float = 0.05, timeout_s: float = 15.0) -> None:
        self._url, self._body, self._expect = url, body, expect
        self._clients, self._pause_s, self._timeout_s = clients, pause_s, timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> SteadyClient:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._timeout_s + 5)
        return self.outcomes()

    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return sorted(self._outcomes, key=lambda o: o.sent)

    def correct_since(self, since: float) -> int:
        """Correct answers to requests sent at ``since`` or later, if no such request failed."""
        later = [o for o in self.outcomes() if o.sent >= since]
        return 0 if any(o.error for o in later) else len(later)

    def _run(self) -> None:
        with httpx.Client(timeout=self._timeout_s) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post(self._url, json=self._body)
                    status: int | None = r.status_code
                    error = "" if r.status_code == 200 and r.json() == self._expect else (
                        f"{r.status_code} {r.headers.get('content-type', '-')}: {r.text[:120]}"
                    )
                except (httpx.HTTPError, ValueError) as exc:
                    status, error = None, f"{type(exc).__name__}: {str(exc)[:120]}"
                with self._lock:
                    self._outcomes.append(Outcome(sent, time.monotonic() - sent, status, error))
                self._stop.wait(self._pause_s)


# An answer slower than this was held up by the fault (they take milliseconds otherwise).
HELD_S = 1.0


@dataclass(frozen=True)
class Gap:
    requests: int
    errors: int
    kinds: dict[str, int]
    wrong_200s: int
    held: int  # correct answers that took over HELD_S
    # fault -> the last failed or held request was answered: from then on answers are prompt
    # and correct again (None: no request failed or waited)
    over_s: float | None
    last_error_s: float | None  # fault -> the last failed request was sent
    slowest_s: float

    def record(self, figures: Figure) -> None:
        figures("requests failed", f"{self.errors} of {self.requests} {self.kinds or ''}", "")
        figures(f"requests answered correctly but held over {HELD_S:.0f}s", self.held, "")
        figures("answers prompt and correct again after", _secs(self.over_s), "")
        figures("last failed request sent after", _secs(self.last_error_s), "")
        figures("slowest answer", self.slowest_s)


def gap(outcomes: list[Outcome], fault_at: float) -> Gap:
    errors = [o for o in outcomes if o.error]
    held = [o for o in outcomes if not o.error and o.took > HELD_S]
    kinds = Counter(str(o.status) if o.status is not None else o.error.split(":")[0]
                    for o in errors)
    ends = [o.sent + o.took for o in [*errors, *held]]
    return Gap(
        requests=len(outcomes),
        errors=len(errors),
        kinds=dict(kinds),
        wrong_200s=sum(1 for o in errors if o.status == 200),
        held=len(held),
        over_s=max(ends) - fault_at if ends else None,
        last_error_s=max(o.sent for o in errors) - fault_at if errors else None,
        slowest_s=max((o.took for o in outcomes), default=0.0),
    )


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


# ``figures`` (tests/fault/conftest.py): figures(what, value, unit="s"), printed and summed up.
Figure = Callable[..., None]


# The serving app, seen from Ray ---------------------------------------------------------------


def serving_replicas() -> set[str]:
    import ray

    named = ray.util.list_named_actors(all_namespaces=True)
    return {a["name"] for a in named if "Server" in a["name"] and "REPLICA" in a["name"]}


def replaced(old: set[str], timeout_s: float = 120.0) -> set[str]:
    """Wait until every replica in ``old`` is gone and a new one runs; the new ones."""
    found: set[str] = wait_for(lambda: (now := serving_replicas()) and not (now & old) and now,
                               timeout_s, 0.2)
    return found


def live_defaults(url: str) -> list[str]:
    """Names of the models whose default version is live, as the serving app lists them."""
    models = httpx.get(f"{url}/models", timeout=10).json()["models"]
    return sorted(
        m["name"] for m in models
        if any(v["version"] == m["default_version"] and v["state"] == "live"
               for v in m["versions"])
    )


# 1. A model replica killed under load ---------------------------------------------------------


def test_a_killed_replica_costs_one_reload_and_a_bounded_gap(
    serving_url: str, ctl: ControllerHandle, figures: Figure
) -> None:
    import ray

    name = "killed_echo"
    register_echo(name, tag="one")
    wait_for(lambda: serve_status(serving_url, name).status_code == 200, 60)
    old = serving_replicas()
    assert len(old) == 1, old

    url = f"{serving_url}/models/{name}/serve"
    with SteadyClient(url, {"prompt": "hi"}, [{"answer": "one:hi"}]) as client:
        time.sleep(2.0)
        baseline = client.outcomes()
        fault_at = time.monotonic()
        for actor_name in old:
            ray.kill(ray.get_actor(actor_name, namespace="serve"), no_restart=True)
        replaced(old)
        replica_up_s = time.monotonic() - fault_at
        # Answers are correct again, and stay so for two seconds.
        wait_for(lambda: client.correct_since(time.monotonic() - 2.0) >= 8, 120, 0.2)
        outcomes = client.stop()

    seen = gap(outcomes, fault_at)
    assert baseline and not any(o.error for o in baseline), baseline
    loads = loads_of(name, "1")
    warmed = [i for i in server_call("warmed") if i.startswith(f"{name}/1@")]
    seen.record(figures)
    figures("new replica listed after", replica_up_s)
    figures(f"loads of {name}/1 on the new replica", len(loads),
            "(ahead of its table)" if warmed else "(on a first request)")

    assert seen.wrong_200s == 0  # never an answer from the wrong version or a half-ready replica
    # Not a storm: at most the requests in flight on the replica when it died fail (a client
    # has one at a time); the ones sent later wait for the new replica and are answered.
    assert seen.errors <= CLIENTS, [o for o in outcomes if o.error]
    # One reload, whether ahead of the table (warm) or on the first request after it.
    assert len(loads) == 1, runner_loads()
    # A starting replica loads the first defaults by name, as many as it keeps (it cannot know
    # which were busy): this one ahead of its table whenever it is among them.
    if name in live_defaults(serving_url)[:2]:
        assert warmed == loads


# 2. The serving app redeployed ---------------------------------------------------------------


def test_a_redeployed_app_restores_the_table_and_keeps_quarantine(
    serving_url: str, ctl: ControllerHandle, figures: Figure
) -> None:
    from ray import serve

    from serving.app import build_app
    from serving.settings import ServingSettings

    name = "redeployed_echo"
    register_echo(name, tag="one")
    register_echo(name, tag="bad", input_label="text")
    wait_for(lambda: ctl.state_of(name, "2") == "quarantined")
    wait_for(lambda: serve_status(serving_url, name, "2").status_code == 409)
    assert serve_status(serving_url, name, "1").status_code == 200
    assert not loads_of(name, "2")
    listing = httpx.get(f"{serving_url}/models", timeout=10).json()
    old = serving_replicas()

    url = f"{serving_url}/models/{name}/serve"
    with SteadyClient(url, {"prompt": "hi"}, [{"answer": "one:hi"}]) as client:
        time.sleep(1.0)
        fault_at = time.monotonic()
        # What sigserve.stack.start_serving does, with the settings it used.
        settings = ServingSettings(
            controller_url=ctl.url,
            max_num_models_per_replica=2,
            serving_token=ctl.secrets.serving_token,
        )
        serve.run(build_app(settings), name=settings.app_name, route_prefix="/", blocking=False)
        deployed_s = time.monotonic() - fault_at
        new = replaced(old)
        replaced_s = time.monotonic() - fault_at
        time.sleep(2.0)  # answered by the new replica only
        outcomes = client.stop()

    seen = gap(outcomes, fault_at)
    seen.record(figures)
    figures("serve.run returned after", deployed_s)
    figures(f"old replica gone, {len(new)} new up after", replaced_s)

    # A rolling update: the new replica takes requests before the old one stops taking them.
    assert seen.errors == 0, [o for o in outcomes if o.error]
    after = httpx.get(f"{serving_url}/models", timeout=10).json()
    assert after["revision"] >= listing["revision"]
    ours = [m for m in after["models"] if m["name"] == name]
    assert ours == [m for m in listing["models"] if m["name"] == name]
    ok = serve_status(serving_url, name, "1")
    assert ok.status_code == 200 and ok.json() == [{"answer": "one:hi"}]
    refused = serve_status(serving_url, name, "2")
    assert refused.status_code == 409
    problem(refused)
    assert any("'prompt'" in reason for reason in refused.json()["reasons"])
    # The new replica never tried to load the quarantined version, and loaded the default once.
    assert not loads_of(name, "2"), runner_loads()
    assert len(loads_of(name, "1")) == 1, runner_loads()


# 3. Versions whose artifacts cannot be loaded --------------------------------------------------


@pytest.fixture(scope="module")
def broken_model(home: Path, serving_url: str, controller_handle: ControllerHandle) -> str:
    """A model: 1 good (default), 2 a truncated pickle, 3 its code file gone, 4 good."""
    ctl = controller_handle
    name = "broken_artifacts"
    # These versions are to be served and fail to load there; with their proof on, the proof
    # would quarantine 2 and 3 before any request (that path: tests/integration/test_proofs.py).
    MlflowClient(ctl.tracking_uri).create_registered_model(name, tags={"sigserve.proof": "off"})
    assert register_echo(name, tag="one") == "1"
    # Broken before they are registered: a file changed after the decision is another
    # artifact than the one checked (a manifest mismatch), not an artifact that cannot load.
    assert register_broken_pickle(home, name, keep=lambda size: size // 2) == "2"
    assert register_broken(home, name, log_echo("three"),
                           lambda d: (d / ECHO_MODEL.name).unlink()) == "3"
    assert register_echo(name, tag="four") == "4"
    # The controller checks what it reads, not whether it loads: every version is decided live.
    wait_for(lambda: all(ctl.state_of(name, v) == "live" for v in "1234"), 60)
    wait_for(lambda: serve_status(serving_url, name, "4").status_code == 200, 60)
    return name


def test_a_version_that_cannot_load_is_503_naming_the_cause_for_it_alone(
    serving_url: str, ctl: ControllerHandle, broken_model: str, figures: Figure
) -> None:
    name = broken_model
    replicas = serving_replicas()
    good = {"1": "one:hi", "4": "four:hi"}
    for version, answer in good.items():
        r = serve_status(serving_url, name, version)
        assert r.status_code == 200 and r.json() == [{"answer": answer}], r.text

    causes = {"2": ("UnpicklingError", "truncated"), "3": ("No such file", ECHO_MODEL.name)}
    for version, words in causes.items():
        started = time.monotonic()
        r = serve_status(serving_url, name, version)
        took = time.monotonic() - started
        assert r.status_code == 503, r.text
        body = problem(r)
        assert body["type"] == "urn:sigserve:problem:model-unavailable"
        assert body["model"] == name and body["version"] == version
        assert r.headers.get("retry-after")
        for word in words:
            assert word in body["detail"], body["detail"]
        # The replica's download directory is its own business; the artifact's source is not.
        assert "sigserve-models-" not in body["detail"]
        figures(f"version {version} answered 503 in", took)
        figures(f"version {version} detail", repr(body["detail"]), "")
        assert loads_of(name, version), "the replica records the failed attempt"

    # The model's other versions, and the default, are unaffected; the replica stayed up.
    for version, answer in good.items():
        r = serve_status(serving_url, name, version)
        assert r.status_code == 200 and r.json() == [{"answer": answer}], r.text
    default = serve_status(serving_url, name)
    assert default.status_code == 200 and default.json() == [{"answer": "one:hi"}]
    assert serving_replicas() == replicas
    assert httpx.get(f"{serving_url}/-/healthz", timeout=10).status_code == 200
    # The replica told the controller, which quarantined both with the cause; from the next
    # table on, clients get the 409 with that reason and the replica loads nothing.
    for version, words in causes.items():
        wait_for(lambda v=version: ctl.state_of(name, v) == "quarantined", 30)
        wait_for(lambda v=version: serve_status(serving_url, name, v).status_code == 409, 30)
        reasons = problem(serve_status(serving_url, name, version))["reasons"]
        assert reasons[0].startswith("serving could not load its artifact"), reasons
        assert words[0] in reasons[0], reasons
    figures("from a failed load to the 409 on serving", time.monotonic() - started)


def serving_state(url: str, name: str, version: str) -> str | None:
    """The version's state in the table serving holds (``GET /models/{name}``)."""
    answer = httpx.get(f"{url}/models/{name}", timeout=10)
    if answer.status_code != 200:
        return None
    return next((v["state"] for v in answer.json()["versions"] if v["version"] == version), None)


def register_truncated(home: Path, name: str) -> str:
    return register_broken_pickle(home, name, keep=lambda size: 10)


def test_requests_to_a_broken_version_do_not_storm_the_replica(
    home: Path, serving_url: str, ctl: ControllerHandle, broken_model: str, figures: Figure
) -> None:
    name = broken_model
    version = register_truncated(home, name)
    # Wait for serving to hold it live without asking it to serve (that would load it).
    wait_for(lambda: serving_state(serving_url, name, version) == "live", 60, 0.05)
    tries_before = len(loads_of(name, version))
    url = f"{serving_url}/models/{name}/versions/{version}/serve"

    def post(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            return client.post(url, json={"prompt": "hi"})

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, range(16)))
    took = time.monotonic() - started
    # 503 while the failure is fresh; 409 for any request after the controller's table
    # quarantining it arrived.
    assert {a.status_code for a in answers} <= {503, 409}, [a.status_code for a in answers]
    tries = len(loads_of(name, version)) - tries_before
    figures("load attempts for 16 concurrent requests to a broken version", tries, "")
    figures("16 concurrent requests to a broken version all answered within", took)
    # One try, and the report ends it: once quarantined, no request loads it again.
    assert tries == 1, runner_loads()
    four = serve_status(serving_url, name, "4")
    assert four.status_code == 200 and four.json() == [{"answer": "four:hi"}]
    wait_for(lambda: serve_status(serving_url, name, version).status_code == 409, 30)
    time.sleep(FAILED_LOAD_MEMORY_S + 0.5)  # the replica forgot the failure; the table did not
    again = serve_status(serving_url, name, version)
    assert again.status_code == 409 and "UnpicklingError" in problem(again)["reasons"][0]
    assert len(loads_of(name, version)) - tries_before == 1


def test_a_broken_default_is_reported_by_its_warm_up_and_stays_the_default_answering_503(
    home: Path, serving_url: str, ctl: ControllerHandle
) -> None:
    name = "broken_default"
    assert register_echo(name, tag="one") == "1"
    assert register_pickled(name) == "2"
    wait_for(lambda: ctl.state_of(name, "2") == "live", 60)  # proven on a replica
    # Its pickle changes in the artifact store after the decision: every download of it is
    # refused from now on (not the files checked), as a store that lost or damaged it would.
    pickle = artifact_dir(home, name, "2") / "python_model.pkl"
    pickle.write_bytes(pickle.read_bytes()[:10])

    def pin(version: str) -> None:
        r = httpx.put(f"{ctl.url}/admin/models/{name}/default", json={"version": version},
                      headers=ctl.admin, timeout=30)
        assert r.status_code == 200, r.text

        def serving_default() -> bool:
            answer = httpx.get(f"{serving_url}/models/{name}", timeout=10)
            return answer.status_code == 200 and answer.json()["default_version"] == version

        wait_for(serving_default, 60, 0.1)

    def v2() -> dict[str, Any]:
        return next(v for v in ctl.model(name)["versions"] if v["version"] == "2")

    pin("2")
    try:
        # The replica warmed the new default before taking the table, failed twice (a fresh
        # download confirms a default's failure) and reported it. A report never takes a
        # default out (a stolen serving token could send one): the controller keeps it on
        # the version, which stays the live default, and the operator decides.
        failure = wait_for(lambda: v2()["load_failure"], 60)
        assert (failure["kind"], failure["quarantines"]) == ("artifact-mismatch", False)
        assert v2()["state"] == "live" and "stays live" in v2()["warnings"][0]
        # Meanwhile its clients get the replica's 503 naming the cause, never a 200.
        r = serve_status(serving_url, name)
        assert r.status_code == 503 and r.headers.get("retry-after"), r.text
        assert "python_model.pkl" in problem(r)["detail"]
        r = serve_status(serving_url, name, "1")
        assert r.status_code == 200 and r.json() == [{"answer": "one:hi"}]
    finally:
        pin("1")  # what the operator does: the old default back
    r = serve_status(serving_url, name)
    assert r.status_code == 200 and r.json() == [{"answer": "one:hi"}]
    # No longer the default, the next report about it quarantines it as any version's does.
    assert v2()["state"] == "live"
    wait_for(lambda: serve_status(serving_url, name, "2").status_code == 409, 30, 0.5)
    assert v2()["state"] == "quarantined" and "quarantines" not in v2()["load_failure"]


# 4. The artifact store down while a version that is not loaded is asked for -------------------


def test_an_artifact_store_outage_never_evicts_a_loaded_default(
    serving_url: str, ctl: ControllerHandle, mlflow_up: Any, figures: Figure
) -> None:
    first, second = "outage_first", "outage_second"
    assert register_echo(first, tag="one") == "1"
    assert register_echo(second, tag="two") == "1"
    assert register_echo(first, tag="new") == "2"  # live, not the default, never asked for
    wait_for(lambda: serving_state(serving_url, first, "2") == "live", 60, 0.05)
    expected = {first: [{"answer": "one:hi"}], second: [{"answer": "two:hi"}]}
    # Both defaults answer: they are the two models the replica's LRU of 2 holds.
    for name, answer in expected.items():
        wait_for(lambda n=name: serve_status(serving_url, n).status_code == 200, 60)
        assert serve_status(serving_url, name).json() == answer
    tries_before = len(loads_of(first, "2"))

    mlflow_up.stop()  # MLflow serves the artifacts (mlflow-artifacts:): the store is down
    stopped_at = time.monotonic()
    clients = [
        SteadyClient(f"{serving_url}/models/{name}/serve", {"prompt": "hi"}, answer,
                     clients=1, pause_s=0.2, timeout_s=10.0)
        for name, answer in expected.items()
    ]  # fmt: skip
    # The third version, asked for again and again through several remembered windows.
    third = SteadyClient(f"{serving_url}/models/{first}/versions/2/serve", {"prompt": "hi"},
                         [{"answer": "new:hi"}], clients=2, pause_s=0.5, timeout_s=5.0)  # fmt: skip
    with clients[0], clients[1], third:
        time.sleep(20.0)
    outage_s = time.monotonic() - stopped_at

    defaults = [o for c in clients for o in c.outcomes()]
    asked = third.outcomes()
    failed = [o for o in defaults if o.error]
    figures("the store down for", outage_s)
    figures("requests to the two loaded defaults, failed", f"{len(failed)} of {len(defaults)}", "")
    figures("slowest answer of a default", max(o.took for o in defaults))
    figures("requests to the version not loaded",
            f"{len(asked)}: " + str(dict(Counter(str(o.status) for o in asked))), "")  # fmt: skip
    figures("load attempts of it during the outage", len(loads_of(first, "2")) - tries_before, "")

    # Both defaults kept answering, correctly, all along: nothing evicted them.
    assert defaults and not failed, failed[:5]
    assert len(defaults) >= 20
    # The version that could not be downloaded was never served, nor quarantined for it.
    assert asked and all(o.status in (503, None) for o in asked), asked[:5]
    assert ctl.state_of(first, "2") == "live"

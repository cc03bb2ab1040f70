"""A storm: 1,000 versions over 100 models, registered as fast as MLflow takes them.

Every version is one of three artifacts logged once: the contract (input ``prompt``), a
compatible one (same signature, another answer) and a breaking one (reads ``text``). Which is
which follows a known pattern, so the expected state of every version is known: the test waits
until the controller has decided all of them, checks each decision, and reports how long the
registrations and the convergence took. Nothing may be lost (a version the registry has and the
controller never decides), nothing decided wrong, and nothing decided twice (two decision events
of one version for the same outcome).

It also prints the figures issue 20's targets are stated in (``tests/load/storm_figures.py``):
registration -> decided and webhook -> servable per version, decisions per second, webhooks per
version and how many were the controller's own writes, the CPU of the controller and of the
MLflow server. ``SIGSERVE_STORM_PROFILE=<dir>`` also records both with py-spy
(``SIGSERVE_PYSPY``: its path), for ``benchmarks/storm_profile.py`` to summarise.

``STORM_DB=postgres make storm``: the same storm against two controller processes on one
PostgreSQL (the session's, ``tests/conftest.py``), the one started last taking the webhooks and
handing them to the leader (as in ``tests/fault/test_two_controllers.py``); no serving app, so
what serving would get is what the leader's long-poll published (its log). Nothing lost, wrong
or decided twice is asserted the same way.

The storm's models are tagged ``sigserve.proof=off``: it measures deciding. With proofs on
(``SIGSERVE_STORM_PROOF=on``), a live version waits for a replica to prove it, one at a time
per replica (``serving/proofs.py``): ~0.25 a second here, so 700 live versions take ~45 minutes
and the storm's timeout with them (``docs/benchmarks.md``, "Decisions at registry scale").
"""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from sigserve.ports import free_port
from sigserve.processes import ManagedProcess
from sigserve.stack import Secrets, controller
from tests.integration.conftest import HOST, RESYNC_INTERVAL_S, register_echo, wait_for
from tests.load import storm_figures as sf

MODELS = int(os.environ.get("SIGSERVE_STORM_MODELS", "100"))
VERSIONS = int(os.environ.get("SIGSERVE_STORM_VERSIONS", "10"))
CONVERGE_TIMEOUT_S = float(os.environ.get("SIGSERVE_STORM_TIMEOUT_S", "1200"))
PROFILE = os.environ.get("SIGSERVE_STORM_PROFILE")
PROOF = os.environ.get("SIGSERVE_STORM_PROOF", "off")
DB = os.environ.get("STORM_DB", "sqlite")


@dataclass
class Stack:
    """What the storm runs against: controllers (one on SQLite, or two on PostgreSQL)."""

    url: str
    admin: dict[str, str]
    tracking_uri: str
    pids: list[int]
    logs: list[Path]
    serving_url: str | None = None
    urls: list[str] = field(default_factory=list)


@pytest.fixture()
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    if DB != "postgres":
        ctl = request.getfixturevalue("ctl")
        serving_url = request.getfixturevalue("serving_url")
        assert ctl._process is not None and ctl._process.pid is not None
        yield Stack(ctl.url, ctl.admin, ctl.tracking_uri, [ctl._process.pid],
                    [ctl.home / "logs" / "controller.log"], serving_url, [ctl.url])
        return
    home: Path = request.getfixturevalue("home")
    uri: str = request.getfixturevalue("tracking_uri")
    secrets: Secrets = request.getfixturevalue("secrets")
    database_url: str = request.getfixturevalue("postgres_url")
    started: list[tuple[ManagedProcess, str, Path]] = []
    try:
        for label in ("a", "b"):  # b, started last, has MLflow's webhook: a follower
            port = free_port()
            process = controller(
                home, host=HOST, port=port, tracking_uri=uri, admin_token=secrets.admin_token,
                webhook_secret=secrets.webhook_secret, resync_interval_s=RESYNC_INTERVAL_S,
                database_url=database_url, log_name=f"controller-storm-{label}.log",
                serving_token=secrets.serving_token,
            ).start()  # fmt: skip
            process.wait_healthy(120)
            started.append((process, f"http://{HOST}:{port}",
                            home / "logs" / f"controller-storm-{label}.log"))
        pids = [p.pid for p, _, _ in started if p.pid is not None]
        urls = [url for _, url, _ in started]
        yield Stack(urls[0], {"Authorization": f"Bearer {secrets.admin_token}"}, uri, pids,
                    [log for _, _, log in started], None, urls)
    finally:
        for process, _, _ in started:
            process.stop()


def reads_per_decision(metrics_texts: list[str], decided: int) -> str:
    """The controllers' registry reads by kind (``sigserve_registry_reads_total``), per
    version decided."""
    reads: dict[str, float] = {}
    for text in metrics_texts:
        for kind, n in re.findall(r'^sigserve_registry_reads_total\{read="(\w+)"\} (\S+)$',
                                  text, re.M):
            reads[kind] = reads.get(kind, 0.0) + float(n)
    if not reads:
        return "storm: registry reads not counted by this controller"
    shown = ", ".join(f"{k} {v:.0f} ({v / decided:.2f})" for k, v in sorted(reads.items()))
    return (f"storm: the controllers' registry reads (per version decided): {shown}; "
            f"all {sum(reads.values()) / decided:.2f} per version")


def kind_of(model: int, version: int) -> str:
    """The artifact of ``version`` of model number ``model``: 1 is the contract."""
    if version == 1:
        return "contract"
    return "breaking" if (model + version) % 3 == 0 else "compatible"


# Longer than the suite's 600 s: a storm on a loaded machine converges in minutes, and the
# write-back follows it.
@pytest.mark.timeout(CONVERGE_TIMEOUT_S + 900)
def test_a_storm_of_registrations_is_decided_right_and_nothing_is_lost(stack: Stack) -> None:
    client = MlflowClient(stack.tracking_uri)
    # Three artifacts, logged once under a throwaway model; every storm version points at one.
    sources = {}
    for kind, label in (("contract", "prompt"), ("compatible", "prompt"), ("breaking", "text")):
        version = register_echo("storm_seed", tag=kind, input_label=label)
        sources[kind] = client.get_model_version("storm_seed", version).source

    names = [f"storm_{m:03d}" for m in range(MODELS)]
    for name in names:
        client.create_registered_model(name, tags={"sigserve.proof": PROOF})

    def register(model: int) -> list[float]:
        took = []
        for version in range(1, VERSIONS + 1):
            started = time.monotonic()
            source = sources[kind_of(model, version)]  # models:/m-<id>: the logged model
            client.create_model_version(
                names[model], source, model_id=source.removeprefix("models:/")
            )
            took.append(time.monotonic() - started)
        return took

    expected = {
        (names[m], str(v)): "quarantined" if kind_of(m, v) == "breaking" else "live"
        for m in range(MODELS)
        for v in range(1, VERSIONS + 1)
    }
    total = MODELS * VERSIONS

    def decided() -> dict[tuple[str, str], str]:
        states: dict[tuple[str, str], str] = {}
        with httpx.Client(timeout=30, headers=stack.admin) as http:
            for name in names:
                r = http.get(f"{stack.url}/admin/models/{name}")
                if r.status_code != 200:
                    continue
                for v in r.json()["versions"]:
                    states[(name, v["version"])] = v["state"]
        return states

    def verdicts() -> int:
        r = httpx.get(f"{stack.url}/admin/models", headers=stack.admin, timeout=30)
        mine = [m for m in r.json()["models"] if m["name"] in set(names)]
        return sum(m["live"] + m["quarantined"] for m in mine)

    mlflow_pids = sf.mlflow_server_pids()
    storm_began = time.time()
    profile = Path(PROFILE) if PROFILE else None
    with sf.cpu_share({"controller": stack.pids, "mlflow": mlflow_pids}) as cpu, \
            sf.profiled({"controller": stack.pids[0], "mlflow": mlflow_pids[0]}, profile):
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            latencies = [t for ts in pool.map(register, range(MODELS)) for t in ts]
        registered_s = time.monotonic() - started
        print(
            f"\nstorm: {total} versions over {MODELS} models registered in {registered_s:.1f}s "
            f"({total / registered_s:.0f}/s; per call p50 "
            f"{1000 * statistics.median(latencies):.0f} ms)"
        )

        # Polled through the one-request summary: a request per model every second would
        # load the controller being measured.
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        while time.monotonic() < deadline and verdicts() < total:
            time.sleep(1.0)
        converged_s = time.monotonic() - started
    states = decided()
    undecided = [k for k in expected if states.get(k) not in ("live", "quarantined")]
    wrong = {
        k: (states[k], e)
        for k, e in expected.items()
        if states.get(k) in ("live", "quarantined") and states[k] != e
    }
    print(
        f"storm: all decided {converged_s:.1f}s after the first registration "
        f"({converged_s - registered_s:.1f}s after the last); lost {len(undecided)}, "
        f"wrong {len(wrong)}"
    )
    print(f"storm: CPU while it ran, % of one core: controller {cpu['controller']:.0f}, mlflow "
          f"server {cpu['mlflow']:.0f} ({len(mlflow_pids)} processes); controller RSS "
          + ", ".join(f"{sf.rss_mb(pid):.0f}" for pid in stack.pids) + " MB"
          + (f" ({len(stack.pids)} controllers on {DB})" if len(stack.pids) > 1 else ""))
    figures = sf.StormFigures(
        registered=sf.registered_at(client, names),
        decisions=sf.decision_events(stack.url, stack.admin, names),
    )
    for log in stack.logs:
        sf.read_log(figures, log, set(names), storm_began)
    print(figures.report(total))
    print(figures.slowest())
    texts = [httpx.get(f"{url}/metrics", timeout=30).text for url in stack.urls]
    for text in texts:
        print("storm: " + sf.histogram_quantiles(text, "sigserve_registration_to_live_seconds"))
    print(reads_per_decision(texts, total))
    assert undecided == [], f"{len(undecided)} versions never decided, e.g. {undecided[:5]}"
    assert wrong == {}, f"decided wrong (found, expected): {dict(list(wrong.items())[:5])}"
    twice = figures.decided_twice()
    assert twice == [], f"{len(twice)} versions decided twice, e.g. {twice[:5]}"

    # The registry is told too, off the decision path (controller/write_back_lane.py): every
    # version's sigserve.state tag says its verdict, however long after the decisions.
    def tagged() -> int:
        told = 0
        for name in names:
            for mv in client.search_model_versions(f"name='{name}'"):
                if mv.tags.get("sigserve.state") == expected.get((name, str(mv.version))):
                    told += 1
        return told

    def backlog() -> str:
        found: dict[str, float] = {}
        for url in stack.urls:
            text = httpx.get(f"{url}/metrics", timeout=30).text
            for state, n in re.findall(
                r'^sigserve_write_back_backlog\{state="(\w+)"\} (\S+)$', text, re.M
            ):
                found[state] = max(found.get(state, 0.0), float(n))  # one database
        return ", ".join(f"{k} {v:.0f}" for k, v in sorted(found.items())) or "not exported"

    decided_at = time.monotonic()
    print(f"storm: write-back backlog when the storm was decided: {backlog()}")
    wait_for(lambda: tagged() == total, 600, 2.0)
    print(f"storm: every verdict tag in the registry {time.monotonic() - decided_at:.1f}s "
          f"after the storm was decided (the write-back lane); backlog then: {backlog()}")

    # Serving got it all too: every model listed with every version in its decided state, once
    # the last table published reached the replica (a long-poll behind the last decision).
    def served() -> dict[tuple[str, str], str]:
        table: dict[str, Any] = httpx.get(f"{serving_url}/models", timeout=30).json()
        return {
            (m["name"], v["version"]): v["state"]
            for m in table["models"]
            if m["name"] in set(names)
            for v in m["versions"]
        }

    if stack.serving_url is None:
        return  # two controllers on PostgreSQL: no serving app (the module's docstring)
    serving_url = stack.serving_url
    wait_for(lambda: served() == expected, 30, 0.5)
    breaking = next(k for k, e in expected.items() if e == "quarantined")
    r = httpx.post(
        f"{serving_url}/models/{breaking[0]}/versions/{breaking[1]}/serve",
        json={"text": "hi"},
        timeout=30,
    )
    assert r.status_code == 409

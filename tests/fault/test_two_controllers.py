"""Two controller processes on one PostgreSQL (issue 9, item 4): the leader SIGKILLed, again and
again; the follower leads within the bound, a version registered in the gap goes live exactly
once, nothing decided before changes, and no table drops a version an earlier one had (an
older registry snapshot written over a newer decision would: issue 15).

Real parts only: the session's PostgreSQL (tests/conftest.py), an `mlflow server` of this test's
own (its registry touches none of the session's models) and two `python -m controller`
processes given the same ``SIGSERVE_DATABASE_URL``. 24-51 s on the shared 2-core machine
(most of it MLflow's and four controllers' start-ups), so it is in the fault suite: ``make fault
FAULT=tests/fault/test_two_controllers.py``. The serving app is not started: what serving
would get is what the controllers' long-poll answers, which two watchers record throughout.
MLflow delivers webhooks to the controller started last, which is always the follower here, so
every webhook takes the follower's hand-off to the leader.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.table_builder import content_digest
from sigserve.ports import free_port
from sigserve.processes import ManagedProcess
from sigserve.stack import Secrets, controller, mlflow_server
from tests.fault.conftest import HOST, RESYNC_INTERVAL_S, Figures
from tests.fault.test_controller_faults import registering_to
from tests.integration.conftest import ECHO_MODEL, register_echo, wait_for
from wire.routing_table import RoutingTable
from wire.table_signature import SIGNATURE_HEADER, canonical_json, sign, table_key

ROUNDS = 3
# The stated bound (docs/architecture.md, "Two controllers"): one election interval (0.5 s)
# after the leader's session ends, plus the new leader's first publish; with room for a busy
# 2-core machine.
TAKEOVER_BOUND_S = 1.5


class Controller:
    """One controller process of the pair: killable, restartable on the same port."""

    def __init__(self, label: str, home: Path, uri: str, database_url: str,
                 secrets: Secrets) -> None:
        self.label = label
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.admin = {"Authorization": f"Bearer {secrets.admin_token}"}
        # What replicas present on their polls: the long-poll needs it (docs/security.md).
        self.serving = {"Authorization": f"Bearer {secrets.serving_token}"}
        self.table_key = table_key(secrets.serving_token)
        self._make = lambda: controller(
            home, host=HOST, port=self.port, tracking_uri=uri,
            admin_token=secrets.admin_token, webhook_secret=secrets.webhook_secret,
            resync_interval_s=RESYNC_INTERVAL_S, database_url=database_url,
            log_name=f"controller-{label}.log", serving_token=secrets.serving_token,
        )  # fmt: skip
        self.process: ManagedProcess | None = None

    def start(self) -> None:
        self.process = self._make().start()
        self.process.wait_healthy(120)  # ?full=true: the registry answers, webhook registered

    def kill(self) -> None:
        assert self.process is not None and self.process.pid is not None
        os.kill(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()  # reaps a killed one too
            self.process = None

    def role(self) -> str | None:
        try:
            return str(httpx.get(f"{self.url}/readyz", timeout=5).json()["role"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def role_since(self) -> float:
        """When it took its role, by its own clock (epoch seconds; one machine, one clock)."""
        since = httpx.get(f"{self.url}/readyz", timeout=5).json()["role_since"]
        return datetime.fromisoformat(since).timestamp()

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}{path}", params=params, headers=self.admin, timeout=30)
        r.raise_for_status()
        return r.json()

    def leader_gauge(self) -> float:
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith("sigserve_controller_leader "):
                return float(line.split()[-1])
        raise AssertionError("no leader gauge")


class Watcher:
    """A serving replica's view: long-polls one controller (while it is up) and records every
    table it is given."""

    def __init__(self, ctl: Controller, seen: dict[int, set[str]]) -> None:
        self.ctl = ctl
        self.seen = seen  # revision -> content digests, shared by the watchers
        self.revisions: list[int] = []
        self.epochs: set[str] = set()
        self.latest: RoutingTable | None = None
        # Versions a table dropped that an earlier one had: nothing is deleted from the
        # registry here, so any is a decision undone (an older snapshot written over a newer).
        self.dropped: list[tuple[int, str, str]] = []
        # Revisions answered without the signature a replica would take (it would refuse them).
        self.unsigned: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        after = -1
        while not self._stop.is_set():
            try:
                r = httpx.get(f"{self.ctl.url}/routing-table", headers=self.ctl.serving,
                              params={"after": after, "timeout": 2}, timeout=10)
            except httpx.HTTPError:
                self._stop.wait(0.05)  # down (killed, restarting): poll again
                continue
            if r.status_code != 200:
                if r.status_code != 204:
                    self._stop.wait(0.05)  # refused (401) or busy (503): not in a tight loop
                continue
            table = RoutingTable.model_validate(r.json())
            signed = sign(canonical_json(r.json()), self.ctl.table_key)
            if r.headers.get(SIGNATURE_HEADER) != signed:
                self.unsigned.append(table.revision)
            if self.latest is not None:
                self.dropped += [(table.revision, m, v) for m, entry in self.latest.models.items()
                                 for v in entry.versions
                                 if v not in getattr(table.models.get(m), "versions", {})]
            self.seen[table.revision].add(content_digest(table))
            self.revisions.append(table.revision)
            self.epochs.add(table.epoch)
            self.latest = table
            after = table.revision

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def log_echo(tag: str) -> str:
    """Log a TaggedEcho model (not registered yet); its model URI."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(ECHO_MODEL),
            signature=infer_signature(pd.DataFrame({"prompt": ["x"]}),
                                      pd.DataFrame({"answer": ["x"]})),
            model_config={"tag": tag, "input_label": "prompt", "output_label": "answer"},
            pip_requirements=[],
        )  # fmt: skip
    return str(info.model_uri)


def decisions(ctl: Controller, name: str) -> dict[str, Any]:
    model = ctl.get(f"/admin/models/{name}")
    return {"default": model["default_version"], "contract": model["contract"],
            **{v["version"]: (v["state"], v["reasons"], v["decided_at"])
               for v in model["versions"]}}  # fmt: skip


def decision_events(ctl: Controller, name: str) -> list[dict[str, Any]]:
    events = ctl.get(f"/admin/models/{name}/events", limit=500)["events"]
    return [e for e in reversed(events) if e["kind"] == "decision"]


def state_in_table(watcher: Watcher, name: str, version: str) -> str | None:
    table = watcher.latest
    if table is None or name not in table.models:
        return None
    entry = table.models[name].versions.get(version)
    return entry.state.value if entry else None


def kill_and_take_over(leader: Controller, follower: Controller, watcher: Watcher, name: str,
                       round_: int, figures: Figures) -> tuple[float, bool]:
    """SIGKILL the leader, register a version at once, see the follower lead and decide it;
    start the killed one again (a follower now). How long the takeover took, and whether the
    version was registered before the follower led."""
    import mlflow

    model_uri = log_echo(f"gap{round_}")  # the artifact first: registering is then fast
    leader.kill()
    killed, killed_wall = time.monotonic(), time.time()
    created = mlflow.register_model(model_uri, name)
    version = str(created.version)
    wait_for(lambda: follower.role() == "leader", 10, 0.01)
    # Both times by this machine's clock: the follower's takeover, the registry's creation.
    took = follower.role_since() - killed_wall
    in_gap = created.creation_timestamp / 1000 < follower.role_since()
    figures(f"round {round_}: SIGKILL -> follower leads", took)
    figures(f"round {round_}: SIGKILL -> version registered (before the follower led: "
            f"{in_gap})", created.creation_timestamp / 1000 - killed_wall)
    wait_for(lambda: state_in_table(watcher, name, version) == "live", 30, 0.01)
    figures(f"round {round_}: SIGKILL -> the new version live in the follower's long-poll",
            time.monotonic() - killed)
    actor = next(e["actor"] for e in decision_events(follower, name) if e["version"] == version)
    figures(f"round {round_}: the new version decided by", actor, "")
    assert took < TAKEOVER_BOUND_S
    assert follower.leader_gauge() == 1.0
    leader.stop()
    leader.start()  # back, as a follower; MLflow now delivers to it
    assert leader.role() == "follower" and leader.leader_gauge() == 0.0
    return took, in_gap


def test_leader_sigkilled_the_follower_leads_within_the_bound_and_nothing_is_decided_twice(
    home: Path, secrets: Secrets, postgres_url: str, figures: Figures,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No serving app takes these controllers' tables, so nothing would prove a version: they
    # decide with proofs off, live once the checks pass, which is what the takeover compares.
    monkeypatch.setenv("SIGSERVE_DEFAULT_PROOF", "off")
    own = home / "two-controllers"
    port = free_port()
    uri = f"http://{HOST}:{port}"
    registry = mlflow_server(own, host=HOST, port=port,
                             encryption_key=secrets.mlflow_encryption_key).start()
    pair = [Controller(label, own, uri, postgres_url, secrets) for label in ("a", "b")]
    seen: dict[int, set[str]] = defaultdict(set)
    try:
        registry.wait_healthy(180)
        pair[0].start()
        assert pair[0].role() == "leader"  # first up on the database
        pair[1].start()  # registers the webhook last: MLflow now delivers to the follower
        assert pair[1].role() == "follower"
        name = "ha_echo"
        with Watcher(pair[0], seen) as wa, Watcher(pair[1], seen) as wb, registering_to(uri):
            # Before the kill: versions delivered to the follower, decided by the leader.
            started = time.monotonic()
            register_echo(name, tag="one")
            register_echo(name, tag="bad", input_label="text")
            wait_for(lambda: state_in_table(wb, name, "2") == "quarantined", 60, 0.02)
            figures("two registrations -> follower's long-poll has both decided",
                    time.monotonic() - started)
            wait_for(lambda: state_in_table(wa, name, "2") == "quarantined", 10, 0.02)
            wait_for(lambda: pair[1].get(f"/admin/models/{name}")["alias"]["version"] == "1",
                     60, 0.1)  # settled: the leader's write-back is done
            actors = {e["actor"].split(":")[0] for e in decision_events(pair[1], name)}
            assert "webhook" in actors  # the follower's deliveries, decided by the leader
            before = decisions(pair[1], name)
            assert {v: before[v][0] for v in ("1", "2")} == {"1": "live", "2": "quarantined"}

            takeovers: list[float] = []
            registered_in_gap = 0
            leader, follower = pair
            for round_ in range(1, ROUNDS + 1):
                watcher = wa if follower is pair[0] else wb
                took, in_gap = kill_and_take_over(leader, follower, watcher, name, round_,
                                                  figures)
                takeovers.append(took)
                registered_in_gap += in_gap
                leader, follower = follower, leader

            after = decisions(leader, name)
            assert decisions(follower, name) == after  # both controllers read one database
            figures("takeover, median of rounds", statistics.median(takeovers))
            figures("versions registered while no controller led", registered_in_gap, "")
            assert registered_in_gap >= 1  # the gap was really tested
            # Nothing decided before changed: state, reasons, decided_at, the default.
            for key, value in before.items():
                assert after[key] == value, key
            # Each version decided exactly once, whatever deliveries and resyncs came twice.
            events = decision_events(leader, name)
            per_version = [e["version"] for e in events]
            assert sorted(per_version) == sorted({*per_version}), per_version
            assert {v: after[v][0] for v in per_version} == {
                "1": "live", "2": "quarantined", **{str(3 + i): "live" for i in range(ROUNDS)}}
            wait_for(lambda: wa.latest == wb.latest, 10, 0.05)
        # No revision carried two contents, and each watcher saw revisions only go up in one
        # epoch (across kills, restarts and takeovers).
        assert all(len(digests) == 1 for digests in seen.values()), dict(seen)
        for watcher in (wa, wb):
            assert len(watcher.epochs) == 1
            assert watcher.revisions == sorted(set(watcher.revisions))
            # Two leaders (for a moment after each kill) never undid each other's decisions.
            assert watcher.dropped == []
            assert watcher.unsigned == []
        figures("table revisions published", len(seen), "")
        assert sorted(c.leader_gauge() for c in pair) == [0.0, 1.0]
    finally:
        for ctl in pair:
            ctl.stop()
        registry.stop()

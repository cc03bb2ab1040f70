"""Two controllers on one real PostgreSQL (the session's server, tests/conftest.py): the election,
a leader that loses its session, a follower's long-poll fed by the leader's publishes, and a
webhook a follower receives handed to the leader. The registry is an address where nothing
listens: what is checked is who reconciles and what each controller answers, not a decision.

The real-process failover (SIGKILL, a real MLflow) is tests/fault/test_two_controllers.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from controller import app as app_module
from controller.app import create_app
from controller.broadcaster import TableBroadcaster
from controller.database import is_migrated, make_engine, migrate
from controller.exceptions import GenerationConflict
from controller.leadership import AdvisoryLock, Leadership, Role
from controller.metrics import Metrics
from controller.reconciler import Reconciler
from controller.records import ModelRecord, VersionRecord
from controller.services import Services
from controller.store import Store
from controller.table_builder import content_digest
from controller.worker import Worker
from tests.unit.test_controller_http import SERVING, SERVING_TOKEN, TOKEN, _settings, delivery
from tests.unit.test_controller_reconciler import ENV, FakeRegistry, sig
from wire.routing_table import RoutingTable, VersionState

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SIG = {"inputs": json.dumps([{"type": "string", "name": "p", "required": True}]),
       "outputs": None, "params": None}
# The defaults a deployment runs with, so the bounds measured here are the ones stated.
ELECTION_S, POLL_S = 0.5, 0.25


def model(name: str = "m", *states: VersionState) -> ModelRecord:
    states = states or (VersionState.LIVE,)
    return ModelRecord(
        name=name, policy="backward", default_version="1", contract=SIG,
        versions={str(i): VersionRecord(version=str(i), state=s, signature=SIG,
                                        signature_read=True, mlmodel_digest="d" * 64,
                                        artifact_uri=f"x/{i}")
                  for i, s in enumerate(states, start=1)},
    )  # fmt: skip


def lock_holder(url: str) -> int | None:
    """The backend pid of the session holding an advisory lock (the leader's), as an operator
    would find it."""
    engine = create_engine(url)
    with engine.connect() as c:
        pid = c.execute(text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' "
                             "AND granted AND database = (SELECT oid FROM pg_database "
                             "WHERE datname = current_database())")).scalar()
    engine.dispose()
    return int(pid) if pid is not None else None


def terminate(url: str, pid: int) -> None:
    engine = create_engine(url)
    with engine.connect() as c:
        assert c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    engine.dispose()


# The election, alone ---------------------------------------------------------------------------


class CountedLeadership(Leadership):
    """The real election, counting the rounds it ran: a check that a role holds waits for
    rounds of the election (where it would change), not for a stretch of time."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.rounds = 0

    async def tick(self) -> None:
        try:
            await super().tick()
        finally:
            self.rounds += 1


async def rounds(n: int, *elections: CountedLeadership, within_s: float = 10.0) -> None:
    """Wait until each of ``elections`` ran ``n`` more rounds."""
    wanted = [(e, e.rounds + n) for e in elections]
    deadline = time.monotonic() + within_s
    while any(e.rounds < at for e, at in wanted):
        assert time.monotonic() < deadline, f"fewer than {n} election rounds in {within_s} s"
        await asyncio.sleep(0.01)


class Candidate:
    """One controller's election: its lock, its Leadership, the role changes it went through."""

    def __init__(self, url: str, **kw: Any) -> None:
        self.engine = make_engine(url)
        self.lock = AdvisoryLock(self.engine, session_timeout_s=10, **kw)
        self.leadership = CountedLeadership(self.lock, Metrics.create().leader,
                                            interval_s=ELECTION_S, **kw)
        self.changes: list[tuple[float, Role]] = []

        async def led() -> None:
            self.changes.append((time.monotonic(), Role.LEADER))

        async def stepped_down() -> None:
            self.changes.append((time.monotonic(), Role.FOLLOWER))

        self.leadership.on_lead, self.leadership.on_step_down = led, stepped_down


def test_one_leads_and_the_other_takes_over_within_the_interval_when_its_session_ends(
    postgres_url: str,
) -> None:
    migrate(make_engine(postgres_url))
    a, b = Candidate(postgres_url), Candidate(postgres_url)

    async def go() -> tuple[float, float]:
        await a.leadership.tick()
        await b.leadership.tick()
        assert (a.leadership.role, b.leadership.role) == (Role.LEADER, Role.FOLLOWER)
        runs = [asyncio.create_task(c.leadership.run()) for c in (a, b)]
        await rounds(3, a.leadership, b.leadership)  # the roles hold, round after round
        assert (a.leadership.role, b.leadership.role) == (Role.LEADER, Role.FOLLOWER)
        assert len(a.changes) == 1 and b.changes == []
        holder = await asyncio.to_thread(lock_holder, postgres_url)
        assert holder is not None
        # The leader's session ends as a dead process's does: the server drops it.
        await asyncio.to_thread(terminate, postgres_url, holder)
        ended = time.monotonic()
        while b.leadership.role is not Role.LEADER or a.leadership.role is not Role.FOLLOWER:
            await asyncio.sleep(0.01)
            assert time.monotonic() - ended < 5
        took_over = b.changes[-1][0] - ended
        stepped_down = a.changes[-1][0] - ended
        # And it stays so: a cannot take the lock back, whatever rounds it runs.
        await rounds(3, a.leadership, b.leadership)
        assert (a.leadership.role, b.leadership.role) == (Role.FOLLOWER, Role.LEADER)
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        for c in (a, b):
            await c.leadership.close()
        return took_over, stepped_down

    took_over, stepped_down = asyncio.run(go())
    print(f"session ended -> follower leads {took_over:.3f} s, old leader steps down "
          f"{stepped_down:.3f} s")
    # One interval, plus a round trip and a scheduling hiccup on a busy machine.
    assert took_over < ELECTION_S + 0.5
    assert stepped_down < ELECTION_S + 0.5
    assert [r for _, r in a.changes] == [Role.LEADER, Role.FOLLOWER]
    assert [r for _, r in b.changes] == [Role.LEADER]


def test_a_leader_whose_session_stops_answering_steps_down_and_lets_the_lock_go(
    postgres_url: str,
) -> None:
    """The leader's database session hangs (its backend SIGSTOPped: connected, answering
    nothing). It must stop leading within its answer bound, not go on without knowing it holds
    the lock; once the session answers again it is dropped, so the lock is free for a leader."""
    migrate(make_engine(postgres_url))
    a, b = Candidate(postgres_url, answer_within_s=1.0), Candidate(postgres_url)

    async def go() -> float:
        await a.leadership.tick()
        await b.leadership.tick()
        assert (a.leadership.role, b.leadership.role) == (Role.LEADER, Role.FOLLOWER)
        holder = await asyncio.to_thread(lock_holder, postgres_url)
        assert holder is not None
        runs = [asyncio.create_task(c.leadership.run()) for c in (a, b)]
        os.kill(holder, signal.SIGSTOP)
        hung = time.monotonic()
        try:
            while a.leadership.role is Role.LEADER:
                await asyncio.sleep(0.01)
                assert time.monotonic() - hung < 5
            stepped_down = time.monotonic() - hung
            # The hung session still holds the lock: nobody may lead meanwhile, however many
            # rounds b tries it and a waits for its session (a round of a's takes its 1 s bound).
            await rounds(2, b.leadership)
            await rounds(1, a.leadership)
            assert Role.LEADER not in (a.leadership.role, b.leadership.role)
            assert [r for _, r in a.changes] == [Role.LEADER, Role.FOLLOWER] and b.changes == []
        finally:
            os.kill(holder, signal.SIGCONT)
        resumed = time.monotonic()
        while Role.LEADER not in (a.leadership.role, b.leadership.role):
            await asyncio.sleep(0.01)
            assert time.monotonic() - resumed < 5
        assert [a.leadership.role, b.leadership.role].count(Role.LEADER) == 1
        assert await asyncio.to_thread(lock_holder, postgres_url) != holder  # a new session
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        for c in (a, b):
            await c.leadership.close()
        return stepped_down

    stepped_down = asyncio.run(go())
    print(f"session hung -> leader steps down {stepped_down:.3f} s")
    assert stepped_down < 1.0 + ELECTION_S + 0.5


def test_controllers_starting_together_migrate_one_after_the_other(postgres_url: str) -> None:
    engines = [make_engine(postgres_url) for _ in range(3)]
    errors: list[BaseException] = []

    def run(engine: Any) -> None:
        try:
            migrate(engine)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(is_migrated(e) for e in engines)


# Two controller apps on one database ---------------------------------------------------------


@contextmanager
def controller(url: str, home: Path) -> Iterator[TestClient]:
    settings = _settings(home, database_url=url, leader_election_interval_s=ELECTION_S,
                         follower_poll_s=POLL_S, serving_token=SERVING_TOKEN)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture()
def seeded(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A database that published before, holding model ``m`` (version 1 live)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    engine = make_engine(postgres_url)
    migrate(engine)
    store = Store(engine)
    store.update_model("m", lambda _: model("m", VersionState.LIVE, VersionState.LIVE))
    store.publish()
    engine.dispose()
    return postgres_url


def services(client: TestClient) -> Services:
    """The running controller's parts, as its lifespan built them."""
    svc = client.app.state.services  # type: ignore[attr-defined]
    assert isinstance(svc, Services)
    return svc


def metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


def poll_table(client: TestClient, after: int, timeout: float = 5.0) -> RoutingTable:
    r = client.get("/routing-table", params={"after": after, "timeout": timeout},
                   headers=SERVING)
    assert r.status_code == 200, r.status_code
    return RoutingTable.model_validate(r.json())


def test_the_first_controller_leads_the_second_follows_and_both_are_ready(
    seeded: str, tmp_path: Path
) -> None:
    with controller(seeded, tmp_path / "a") as a, controller(seeded, tmp_path / "b") as b:
        ready_a, ready_b = a.get("/readyz"), b.get("/readyz")
        assert ready_a.status_code == ready_b.status_code == 200
        assert (ready_a.json()["role"], ready_b.json()["role"]) == ("leader", "follower")
        # Each runs the loops of its role, and reports them.
        assert {"worker_loop", "resync_loop", "requests_loop", "election_loop",
                "table_sync_loop"} <= set(ready_a.json()["checks"])
        assert "worker_loop" not in ready_b.json()["checks"]
        assert ready_b.json()["checks"]["election_loop"] == "ok"
        assert metric(a, "sigserve_controller_leader ") == 1.0
        assert metric(b, "sigserve_controller_leader ") == 0.0
        # Both answer the long-poll with the same table, and reads.
        ta, tb = poll_table(a, -1), poll_table(b, -1)
        assert ta == tb
        assert b.get("/admin/models/m", headers=ADMIN).json()["default_version"] == "1"


def test_on_sqlite_the_one_controller_leads_and_runs_no_election(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = _settings(tmp_path)
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    Store(engine).publish()
    engine.dispose()
    with TestClient(create_app(settings)) as c:
        ready = c.get("/readyz").json()
        assert ready["role"] == "leader"
        assert {k for k in ready["checks"] if k.endswith("_loop")} == {"worker_loop",
                                                                       "resync_loop"}
        assert metric(c, "sigserve_controller_leader ") == 1.0


def test_a_followers_long_poll_gets_what_the_leader_publishes_and_the_other_way_round(
    seeded: str, tmp_path: Path
) -> None:
    with controller(seeded, tmp_path / "a") as leader, \
            controller(seeded, tmp_path / "b") as follower:
        start = poll_table(follower, -1)
        seen: dict[int, str] = {start.revision: content_digest(start)}

        # An admin change on the leader: the follower's long-poll answers with it.
        got: list[tuple[float, RoutingTable]] = []

        def wait() -> None:
            table = poll_table(follower, start.revision)
            got.append((time.monotonic(), table))

        # Told when the follower's long-poll reaches its broadcaster (the real one, called
        # through). From there to waiting for a table nothing yields to the follower's event
        # loop, the only place its table can change, so the change below finds it waiting.
        broadcaster = services(follower).broadcaster
        reached = threading.Event()
        newer_than = broadcaster.newer_than

        async def reaching(revision: int, epoch: str | None, timeout: float) -> RoutingTable | None:
            reached.set()
            return await newer_than(revision, epoch, timeout)

        broadcaster.newer_than = reaching  # type: ignore[method-assign]
        waiter = threading.Thread(target=wait)
        waiter.start()
        assert reached.wait(10), "the follower's long-poll never started waiting"
        sent = time.monotonic()
        r = leader.post("/admin/models/m/versions/2/quarantine", json={"reason": "canary"},
                        headers=ADMIN)
        answered = time.monotonic()
        assert r.status_code == 200 and r.json()["published"] is True
        waiter.join(10)
        at, table = got[0]
        delay = at - sent  # from before the change was sent: an upper bound
        print(f"admin change on the leader ({answered - sent:.3f} s) -> follower's long-poll "
              f"answers {delay:.3f} s after it was sent")
        assert table.revision == start.revision + 1
        assert table.models["m"].versions["2"].state is VersionState.QUARANTINED
        assert delay < POLL_S + 0.5
        seen[table.revision] = content_digest(table)

        # An admin change on the follower is published by the follower (a 200 means serving
        # is being told), and the leader's long-poll gets it.
        r = follower.post("/admin/models/m/versions/2/release", json={"reason": "fine"},
                          headers=ADMIN)
        assert r.status_code == 200 and r.json()["published"] is True
        again = poll_table(leader, table.revision)
        assert again.revision == table.revision + 1
        assert again.models["m"].versions["2"].state is VersionState.LIVE
        assert poll_table(follower, table.revision) == again
        seen[again.revision] = content_digest(again)
        # Each revision one content, whichever controller answered it.
        for client in (leader, follower):
            latest = poll_table(client, -1)
            assert seen[latest.revision] == content_digest(latest)


def test_a_table_is_not_served_under_a_revision_whose_decisions_moved(seeded: str) -> None:
    """Decisions committed but not yet published must not go out under the last revision."""
    engine = make_engine(seeded)
    store = Store(engine)
    published = store.published_table()
    assert published is not None
    store.update_model("m", lambda _: model("m", VersionState.LIVE, VersionState.QUARANTINED))
    assert store.published_table() is None  # the publish that follows the commit brings it
    # A replica that saw the last revision from another controller: caught up on a new one.
    caught = store.catch_up(published.revision)
    assert caught.revision == published.revision + 1
    assert caught.models["m"].versions["2"].state is VersionState.QUARANTINED
    assert store.published_table() == caught
    assert store.publish() == caught  # nothing new to publish
    engine.dispose()


def test_a_webhook_on_the_follower_is_handed_to_the_leader_with_its_record(
    seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "Leadership", CountedLeadership)
    engine = make_engine(seeded)
    store = Store(engine)
    with controller(seeded, tmp_path / "a") as leader, \
            controller(seeded, tmp_path / "b") as follower:
        before = metric(leader, 'sigserve_reconciles_total{result="temporary_error"}')
        body, headers = delivery({"entity": "model_version", "action": "created",
                                  "data": {"name": "handed", "version": "1"}},
                                 delivery_id="d-handed")
        r = follower.post("/webhooks/mlflow", content=body, headers=headers)
        assert r.status_code == 200 and r.json()["status"] == "accepted"
        sent = time.monotonic()
        # The leader takes the request and reconciles the name: here the registry is down,
        # so its pass ends in a temporary error, which it counts.
        while metric(leader, 'sigserve_reconciles_total{result="temporary_error"}') <= before:
            time.sleep(0.02)
            assert time.monotonic() - sent < 5
        took = time.monotonic() - sent
        print(f"webhook on the follower -> leader reconciles {took:.3f} s")
        assert took < POLL_S + 1.0
        with engine.connect() as c:  # taken: nothing left for another leader to redo
            assert c.execute(text("SELECT count(*) FROM reconcile_requests")).scalar() == 0
        assert metric(follower, "sigserve_reconciles_total") == 0.0  # the follower decides nothing
        # MLflow's retry of the delivery is a duplicate, and asks nothing more of the leader.
        again = follower.post("/webhooks/mlflow", content=body, headers=headers)
        assert again.json()["status"] == "duplicate"
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM reconcile_requests")).scalar() == 0

    # While the leader is not reconciling (here: its lock held by a session that runs no
    # worker), the request waits in the database, with its delivery's actor, for whoever
    # leads next.
    lock = AdvisoryLock(engine, session_timeout_s=10)
    assert lock.tick()  # hold the lock: the controller below follows
    try:
        with controller(seeded, tmp_path / "d") as follower:
            assert follower.get("/readyz").json()["role"] == "follower"
            body, headers = delivery({"entity": "model_version", "action": "created",
                                      "data": {"name": "waiting", "version": "1"}},
                                     delivery_id="d-waiting")
            election = services(follower).leadership
            assert isinstance(election, CountedLeadership)
            assert follower.post("/webhooks/mlflow", content=body,
                                 headers=headers).json()["status"] == "accepted"
            # Two rounds of its election, where it would lead and take the request if it
            # could: it follows, and runs no loop that takes requests (a leader's drains them
            # every POLL_S), so the request is still there, with its delivery's actor.
            asyncio.run(rounds(2, election))
            ready = follower.get("/readyz").json()
            assert ready["role"] == "follower" and "requests_loop" not in ready["checks"]
            assert store.take_reconcile_requests() == [("waiting", "webhook:d-waiting")]
    finally:
        lock.close()
        engine.dispose()


def test_a_leader_that_loses_its_session_stops_reconciling_and_the_follower_takes_over(
    seeded: str, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        a = stack.enter_context(controller(seeded, tmp_path / "a"))
        b = stack.enter_context(controller(seeded, tmp_path / "b"))
        holder = lock_holder(seeded)
        assert holder is not None
        terminate(seeded, holder)  # the leader's connection to its lock is lost
        ended, ended_wall = time.monotonic(), time.time()
        while not (a.get("/readyz").json()["role"] == "follower"
                   and b.get("/readyz").json()["role"] == "leader"):
            time.sleep(0.02)
            assert time.monotonic() - ended < 5
        took = time.monotonic() - ended
        print(f"leader's session ended -> the follower leads, the old leader follows {took:.3f} s")
        ready_a = a.get("/readyz").json()
        assert ready_a["status"] == "ready"
        # Since when each holds its role: the takeover, after the session ended.
        for ready in (ready_a, b.get("/readyz").json()):
            assert datetime.fromisoformat(ready["role_since"]).timestamp() >= ended_wall
        assert "worker_loop" not in ready_a["checks"]  # it stopped reconciling
        assert metric(a, "sigserve_controller_leader ") == 0.0
        assert metric(b, "sigserve_controller_leader ") == 1.0
        # A webhook to the old leader is now handed to the new one.
        body, headers = delivery({"entity": "model_version", "action": "created",
                                  "data": {"name": "after", "version": "1"}},
                                 delivery_id="d-after")
        before = metric(b, 'sigserve_reconciles_total{result="temporary_error"}')
        assert a.post("/webhooks/mlflow", content=body, headers=headers).status_code == 200
        sent = time.monotonic()
        while metric(b, 'sigserve_reconciles_total{result="temporary_error"}') <= before:
            time.sleep(0.02)
            assert time.monotonic() - sent < 5


def test_a_leader_stopped_gracefully_lets_the_lock_go_and_the_follower_leads_at_once(
    seeded: str, tmp_path: Path
) -> None:
    with controller(seeded, tmp_path / "b") as first:
        assert first.get("/readyz").json()["role"] == "leader"
        with controller(seeded, tmp_path / "a") as second:
            assert second.get("/readyz").json()["role"] == "follower"
            first.__exit__(None, None, None)  # SIGTERM-like: the lifespan ends
            stopped = time.monotonic()
            while second.get("/readyz").json()["role"] != "leader":
                time.sleep(0.02)
                assert time.monotonic() - stopped < 5
            took = time.monotonic() - stopped
            print(f"leader stopped -> follower leads {took:.3f} s")
            assert took < ELECTION_S + 0.5


# Two leaders cannot undo each other ------------------------------------------------------------


class HeldRegistry(FakeRegistry):
    """One controller's view of a registry shared with another: reading ``hold``'s artifact
    waits until the test lets it go, so a reconcile holds an older snapshot meanwhile."""

    def __init__(self, shared: FakeRegistry, hold: str | None = None) -> None:
        super().__init__()
        self.shared, self.hold = shared, hold
        self.reached, self.release = threading.Event(), threading.Event()

    def model(self, name: str) -> Any:
        return self.shared.model(name)

    def versions(self, name: str) -> Any:
        return self.shared.versions(name)

    def artifact(self, name: str, version: str) -> Any:
        if version == self.hold:
            self.reached.set()
            assert self.release.wait(30), "the test never let the read go"
        return self.shared.artifact(name, version)


def test_a_reconcile_holding_an_older_snapshot_does_not_commit_over_a_newer_decision(
    postgres_url: str,
) -> None:
    """Controller A reads the registry (versions 1, 2) and is held reading version 2's
    artifact; version 3 is registered and controller B decides the newer snapshot (1, 2, 3)
    and commits. A's older snapshot must not then drop version 3 from the decisions."""
    engines = [make_engine(postgres_url) for _ in range(2)]
    migrate(engines[0])
    store_a, store_b = Store(engines[0]), Store(engines[1])
    shared = FakeRegistry(versions_={"1": ("models:/m-1", sig("p"))})
    Reconciler(store_b, HeldRegistry(shared), ENV, write_back=False).reconcile("m")
    shared.versions_["2"] = ("models:/m-2", sig("p"))
    held = HeldRegistry(shared, hold="2")
    a = Reconciler(store_a, held, ENV, write_back=False)
    outcome: list[object] = []

    def reconcile_a() -> None:
        try:
            outcome.append(a.reconcile("m", "resync"))
        except Exception as exc:  # what A ends with is checked below
            outcome.append(exc)

    thread = threading.Thread(target=reconcile_a)
    thread.start()
    try:
        assert held.reached.wait(30)
        shared.versions_["3"] = ("models:/m-3", sig("p"))
        Reconciler(store_b, HeldRegistry(shared), ENV, write_back=False).reconcile("m", "resync")
        decided = store_b.load_model("m")
        assert decided is not None and set(decided.versions) == {"1", "2", "3"}
    finally:
        held.release.set()
        thread.join(30)
    after = store_a.load_model("m")
    assert after is not None
    assert set(after.versions) == {"1", "2", "3"}, "A's older snapshot undid B's decision"
    assert after.versions["3"].state is VersionState.LIVE
    # A's pass ends in a conflict (its worker requeues the model) and its next pass, from a
    # fresh read, finds B's decision and has nothing to change.
    assert len(outcome) == 1 and isinstance(outcome[0], GenerationConflict), outcome
    again = a.reconcile("m", "retry")
    assert not again.changed
    assert store_a.load_model("m") == after
    for engine in engines:
        engine.dispose()


def test_a_reconcile_in_flight_when_another_controller_takes_over_cannot_commit(
    postgres_url: str,
) -> None:
    """The old leader (A, cut off or frozen: it does not know yet) is held mid-pass when B
    takes over. B's worker fences before its first pass, so A's write, built on a read from
    before the takeover, is refused even though nobody else wrote the model."""
    engines = [make_engine(postgres_url) for _ in range(2)]
    migrate(engines[0])
    store_a, store_b = Store(engines[0]), Store(engines[1])
    shared = FakeRegistry(versions_={"1": ("models:/m-1", sig("p"))})
    Reconciler(store_a, HeldRegistry(shared), ENV, write_back=False).reconcile("m")
    shared.versions_["2"] = ("models:/m-2", sig("p"))
    held = HeldRegistry(shared, hold="2")
    outcome: list[object] = []

    def reconcile_a() -> None:
        try:
            outcome.append(Reconciler(store_a, held, ENV, write_back=False).reconcile("m"))
        except Exception as exc:  # checked below
            outcome.append(exc)

    thread = threading.Thread(target=reconcile_a)
    thread.start()
    b_registry = HeldRegistry(shared)
    b = Worker(Reconciler(store_b, b_registry, ENV, write_back=False), store_b, b_registry,
               TableBroadcaster(), Metrics.create(), resync_interval_s=3600,
               retry_initial_s=0.05, retry_max_s=0.1)

    async def take_over() -> None:
        run = asyncio.create_task(b.run())  # B leads: its worker starts...
        b.enqueue("other")  # ...and reconciles
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(store_b.load_model, "other") is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    try:
        assert held.reached.wait(30)
        asyncio.run(take_over())
    finally:
        held.release.set()
        thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], GenerationConflict), outcome
    after = store_b.load_model("m")
    assert after is not None and set(after.versions) == {"1"}  # nothing of A's pass
    for engine in engines:
        engine.dispose()

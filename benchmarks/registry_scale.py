"""The controller over a large registry: priming, a resync with nothing changed, a webhook
during a resync, memory (issue 20's targets; ``make registry-scale``).

    .venv/bin/python benchmarks/registry_scale.py [--models 10000] [--versions 1]
        [--resync-interval 30] [--window 90] [--rebuild]

**The registry.** ``--models`` registered models with ``--versions`` versions each, every
version pointing at one small model from code (``benchmarks/models/upper.py``) logged once.
Built once and kept in ``~/.cache/sigserve-registry-scale/m<models>-v<versions>`` (an MLflow
SQLite database and its artifacts): the model is logged through a real ``mlflow server``, the
models and versions are then written in one transaction through MLflow's own tables
(``mlflow.store.model_registry.dbmodels``), which takes seconds where 60,000 REST calls would
take a quarter of an hour. No webhook exists while it is built, so nothing fires. Each run
works on a copy.

**The run.** An ``mlflow server`` on the copy (one worker, as the stack starts it) and a
controller on a fresh SQLite database (``python -m controller``, webhook registered, no Ray:
``SIGSERVE_DEFAULT_PROOF=off``, so a version passing the checks is live at once). Printed:

- priming: the controller's start to the first routing table its long-poll answers (every
  listed model reconciled once), and its ``primed`` log line; then how long until the
  controller and MLflow fall quiet (the verdicts written back to the registry);
- a resync with nothing changed: the activity bursts of the controller and MLflow (CPU sampled
  every 0.25 s) over ``--window`` seconds, their lengths, and the reconciles in the window;
- the controller's CPU over the window (% of one core) and its RSS;
- the write-back's catch-up after priming: the ``sigserve_write_back_backlog`` gauge until
  nothing is behind or queued (``--drain-timeout``), its rate in models and own-write webhooks
  per second, both processes' CPU; ``--profile DIR`` records both with py-spy for
  ``--profile-s`` of it (``SIGSERVE_PYSPY``: py-spy's path; ``benchmarks/storm_profile.py DIR``
  sums it up);
- a webhook during a resync: one version registered (through MLflow's REST API) as a burst
  begins; its delivery's receipt (the controller's log line) to its decision (its first
  decision event in the audit log);
- each resync of the window as the controller logged it (wall time, listing, enqueued), and
  how long the run's publishes took (``sigserve_publish_seconds``).

Targets (issue 20): resync < 10 s and < 5% of a core between resyncs; webhook < 0.5 s; RSS
< 500 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from bench_stack import log_upper_model

from sigserve.ports import free_port
from sigserve.stack import Secrets, controller, mlflow_server

HOST = "127.0.0.1"
CACHE = Path.home() / ".cache" / "sigserve-registry-scale"
# Controller and MLflow together above this share of a core (per 0.25 s sample): busy.
BUSY_SHARE = 0.15
SAMPLE_S = 0.25
SCRAPE_S = 15.0


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def build(models: int, versions: int, into: Path) -> str:
    """The registry, in ``into``: ``mlflow.db`` and ``mlflow-artifacts``; the logged model's
    id (what a version registered through MLflow's REST API names as its source)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.store.model_registry.dbmodels.models import SqlModelVersion, SqlRegisteredModel
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    into.mkdir(parents=True)
    port = free_port()
    key = Secrets.load_or_create(into).mlflow_encryption_key
    server = mlflow_server(into, host=HOST, port=port, encryption_key=key).start()
    try:
        server.wait_healthy(180)
        mlflow.set_tracking_uri(f"http://{HOST}:{port}")
        info = log_upper_model(f"http://{HOST}:{port}")
        location = str(MlflowClient().get_logged_model(info.model_id).artifact_location)
    finally:
        server.stop()
    store = SqlAlchemyStore(f"sqlite:///{into / 'mlflow.db'}")
    now = int(time.time() * 1000)
    with store.ManagedSessionMaker() as session:
        for m in range(models):
            name = f"scale_{m:05d}"
            session.add(SqlRegisteredModel(name=name, creation_time=now, last_updated_time=now))
            session.add_all(
                SqlModelVersion(
                    name=name, version=v, creation_time=now, last_updated_time=now,
                    source=location, storage_location=location, status="READY",
                )
                for v in range(1, versions + 1)
            )  # fmt: skip
            if m % 1000 == 999:
                session.flush()
    return str(info.model_id)


def registry(models: int, versions: int, rebuild: bool) -> tuple[Path, str]:
    """The built registry's directory and its logged model's id."""
    cached = CACHE / f"m{models}-v{versions}"
    if (cached / "built.json").exists() and not rebuild:
        built = json.loads((cached / "built.json").read_text())
        print(f"registry: {models} models x {versions} versions, cached in {cached} (built in "
              f"{built['build_s']:.0f} s)", flush=True)  # fmt: skip
        return cached, str(built["model_id"])
    shutil.rmtree(cached, ignore_errors=True)
    building = Path(tempfile.mkdtemp(prefix="rs-build-", dir="/tmp")) / "registry"
    started = time.monotonic()
    model_id = build(models, versions, building)
    took = time.monotonic() - started
    (building / "built.json").write_text(json.dumps({"build_s": took, "model_id": model_id}))
    (building / "secrets.json").unlink()
    shutil.rmtree(building / "logs", ignore_errors=True)
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(building, cached)
    shutil.rmtree(building.parent, ignore_errors=True)
    print(f"registry: {models} models x {versions} versions built in {took:.0f} s, kept in "
          f"{cached}", flush=True)  # fmt: skip
    return cached, model_id


def cpu_s(pid: int, tree: bool) -> float:
    """CPU seconds of ``pid`` (and, with ``tree``, everything it started)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *(root.children(recursive=True) if tree else [])]
        return float(sum(p.cpu_times().user + p.cpu_times().system for p in procs))
    except psutil.Error:
        return 0.0


@dataclass
class Sample:
    at: float
    controller_cpu_s: float
    mlflow_cpu_s: float
    reconciles: float


@dataclass
class Sampler:
    """CPU of both processes and the controller's reconcile count, every ``SAMPLE_S``."""

    controller_pid: int
    mlflow_pid: int
    metrics_url: str
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _reconciles(self, http: httpx.Client) -> float:
        try:
            text = http.get(self.metrics_url).text
        except httpx.HTTPError:
            return -1.0
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("sigserve_reconciles_total{"))  # fmt: skip

    def run(self) -> None:
        reconciles, scraped = -1.0, 0.0
        with httpx.Client(timeout=5) as http:
            while not self._stop.wait(SAMPLE_S):
                # /metrics every SCRAPE_S only: each scrape costs the controller a COUNT of the
                # models behind the write-back, which at 4 a second would be part of the CPU
                # this measures (Prometheus scrapes every 15-60 s).
                if time.monotonic() - scraped >= SCRAPE_S:
                    reconciles, scraped = self._reconciles(http), time.monotonic()
                self.samples.append(Sample(
                    time.time(), cpu_s(self.controller_pid, False),
                    cpu_s(self.mlflow_pid, True), reconciles,
                ))  # fmt: skip

    def start(self) -> Sampler:
        threading.Thread(target=self.run, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def busy(self, i: int) -> bool:
        a, b = self.samples[i - 1], self.samples[i]
        used = (b.controller_cpu_s - a.controller_cpu_s) + (b.mlflow_cpu_s - a.mlflow_cpu_s)
        return used / max(1e-6, b.at - a.at) > BUSY_SHARE

    def busy_now(self) -> bool:
        return len(self.samples) > 2 and self.busy(len(self.samples) - 1)

    def quiet_for(self, seconds: float) -> bool:
        n = int(seconds / SAMPLE_S)
        return len(self.samples) > n + 1 and not any(
            self.busy(i) for i in range(len(self.samples) - n, len(self.samples))
        )

    def bursts(self, since: float) -> list[tuple[float, float]]:
        found: list[tuple[float, float]] = []
        start: float | None = None
        for i in range(1, len(self.samples)):
            if self.samples[i].at < since:
                continue
            if self.busy(i) and start is None:
                start = self.samples[i - 1].at
            elif not self.busy(i) and start is not None:
                found.append((start, self.samples[i - 1].at))
                start = None
        if start is not None:
            found.append((start, self.samples[-1].at))  # still busy when the window closed
        return found

    def window(self, since: float) -> tuple[float, float, float]:
        """Controller CPU % of a core, MLflow's, and reconciles, from ``since`` to now."""
        inside = [s for s in self.samples if s.at >= since]
        a, b = inside[0], inside[-1]
        wall = max(1e-6, b.at - a.at)
        return (100 * (b.controller_cpu_s - a.controller_cpu_s) / wall,
                100 * (b.mlflow_cpu_s - a.mlflow_cpu_s) / wall, b.reconciles - a.reconciles)


def first_table(url: str, serving_token: str, timeout_s: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {serving_token}"}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=70, headers=headers) as http:
        while time.monotonic() < deadline:
            try:
                r = http.get("/routing-table", params={"after": -1, "timeout": 30})
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if r.status_code == 200:
                table: dict[str, Any] = r.json()
                return table
    raise TimeoutError(f"no routing table within {timeout_s:.0f} s")


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def webhook_latency(ctl_url: str, admin: dict[str, str], log: Path, name: str, version: str,
                    timeout_s: float = 120) -> tuple[float | None, float | None]:
    """(receipt -> decided, receipt -> published live) of ``name`` v``version``, seconds."""
    deadline = time.monotonic() + timeout_s
    decided: float | None = None
    while time.monotonic() < deadline and decided is None:
        events = httpx.get(f"{ctl_url}/admin/models/{name}/events", headers=admin,
                           params={"limit": 50}, timeout=30).json()["events"]  # fmt: skip
        finals = [_epoch(e["at"]) for e in events if e["kind"] == "decision"
                  and e["version"] == version and (e["after"] or {}).get("state") != "pending"]
        decided = min(finals) if finals else None
        time.sleep(0.2)
    received = published = None
    for line in log_lines(log):
        if (line.get("event") == "webhook" and line.get("model") == name
                and line.get("version") == version
                and line.get("mlflow_event") == "model_version.created"):
            received = received or _epoch(line["time"])
        if line.get("event") == "publish" and f"{name}/{version}=live" in line.get("changes", []):
            published = published or _epoch(line["time"])
    if received is None:
        return None, None
    return (decided - received if decided else None,
            published - received if published else None)


def during_resyncs(sampler: Sampler, client: Any, model_id: str, models: int, window: float,
                   count: int) -> list[tuple[str, str, bool, float]]:
    """Register ``count`` versions within ``window`` seconds, each as a burst of activity (a
    resync) begins, to models spread over the names (a resync goes through them sorted);
    (model, version, registered during a burst, when)."""
    done: list[tuple[str, str, bool, float]] = []
    began = last = time.time()
    was_busy = True
    every = window / max(1, count)
    while time.time() - began < window and len(done) < count:
        busy = sampler.busy_now()
        starts = busy and not was_busy  # a burst begins
        steady = busy and time.time() - last >= every  # busy throughout: a resync never ends
        was_busy = busy
        if (starts or steady) and time.time() - last >= 3:
            name = f"scale_{(len(done) + 1) * models // count - 1:05d}"
            version = client.create_model_version(
                name, f"models:/{model_id}", model_id=model_id).version
            done.append((name, str(version), True, last := time.time()))
        time.sleep(0.05)
    while time.time() - began < window:
        time.sleep(0.1)
    if not done:
        name = f"scale_{models - 1:05d}"
        version = client.create_model_version(name, f"models:/{model_id}", model_id=model_id)
        done.append((name, str(version.version), False, time.time()))
    return done


def listing(cached: Path, runs: int = 3) -> None:
    """What the resync's listing costs at this size, without a controller: the controller's own
    ``Registry`` lists the registry (``listing()`` where it exists, else ``model_names()``)."""
    from controller.registry import Registry

    home = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    shutil.copytree(cached, home, dirs_exist_ok=True)
    secrets = Secrets.load_or_create(home)
    port = free_port()
    server = mlflow_server(home, host=HOST, port=port,
                           encryption_key=secrets.mlflow_encryption_key)  # fmt: skip
    try:
        server.start().wait_healthy(180)
        assert server.pid is not None
        reg = Registry(f"http://{HOST}:{port}")
        lister = getattr(reg, "listing", reg.model_names)
        me = psutil.Process()
        for _ in range(runs):
            mlflow_before = cpu_s(server.pid, True)
            mine = me.cpu_times()
            started = time.monotonic()
            listed = lister()
            wall = time.monotonic() - started
            client_cpu = sum(me.cpu_times()[:2]) - sum(mine[:2])
            mlflow_cpu = cpu_s(server.pid, True) - mlflow_before
            print(f"listing ({lister.__name__}): {len(listed)} models in {wall:.2f} s; CPU: the "
                  f"client {client_cpu:.2f} s, MLflow {mlflow_cpu:.2f} s", flush=True)
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def metric(text: str, name: str, **labels: str) -> float | None:
    """The sum of ``name``'s samples whose labels include ``labels`` (None: none found)."""
    found = None
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " ") \
                and all(w in line for w in want):
            value = float(line.rsplit(" ", 1)[1])
            found = value if found is None else found + value
    return found


def drain(sampler: Sampler, metrics_url: str, args: argparse.Namespace,
          pids: dict[str, int]) -> None:
    """Wait until the write-back lane has written every verdict back (the
    ``sigserve_write_back_backlog`` gauge: behind and queued both 0), printing its progress;
    with ``--profile DIR``, py-spy records both processes for ``--profile-s`` of it."""
    started = time.monotonic()
    wall_from = time.time()
    first_behind: float | None = None
    spy = profile(pids, args.profile, args.profile_s) if args.profile else None
    last_print = 0.0
    behind = queued = own = None
    own_from: float | None = None
    try:
        with httpx.Client(timeout=30) as http:
            while time.monotonic() - started < args.drain_timeout:
                text = http.get(metrics_url).text
                behind = metric(text, "sigserve_write_back_backlog", state="behind")
                queued = metric(text, "sigserve_write_back_backlog", state="queued")
                own = metric(text, "sigserve_webhooks_total", result="own_write") or 0.0
                own_from = own if own_from is None else own_from
                if behind is not None and behind == behind:  # NaN before the first count
                    first_behind = behind if first_behind is None else first_behind
                now = time.monotonic()
                if now - last_print >= 30:
                    last_print = now
                    print(f"write-back: {now - started:.0f} s: behind {behind}, queued "
                          f"{queued}, own-write webhooks {own - own_from:.0f}", flush=True)
                if behind == 0 and queued == 0:
                    break
                time.sleep(2)
    finally:
        if spy is not None:
            stop_profile(spy)
    took = time.monotonic() - started
    done = behind == 0 and queued == 0
    controller_pct, mlflow_pct, _ = sampler.window(wall_from)
    writes = (own or 0.0) - (own_from or 0.0)
    models = first_behind or 0.0
    print(f"write-back: {'drained' if done else 'NOT drained'} in {took:.0f} s after the first "
          f"table: {models:.0f} models behind at first ({models / max(took, 1e-6):.1f} models/s"
          f"), {writes:.0f} own-write webhooks ({writes / max(took, 1e-6):.1f}/s); CPU % of one "
          f"core: controller {controller_pct:.0f}, mlflow {mlflow_pct:.0f}", flush=True)


def profile(pids: dict[str, int], out: Path, seconds_: float) -> list[subprocess.Popen[bytes]]:
    """py-spy (``SIGSERVE_PYSPY``, else on the PATH) on each process, ``--idle --threads``, raw
    stacks in ``out/<name>.txt`` for ``benchmarks/storm_profile.py``."""
    out.mkdir(parents=True, exist_ok=True)
    spy = os.environ.get("SIGSERVE_PYSPY", "py-spy")
    return [
        subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--idle", "--threads", "--nonblocking",
             "--rate", "50", "--duration", str(int(seconds_)), "--format", "raw",
             "-o", str(out / f"{name}.txt"), *(["--subprocesses"] if name == "mlflow" else [])],
            stdout=subprocess.DEVNULL, stderr=(out / f"{name}.log").open("wb"),
        )
        for name, pid in pids.items()
    ]  # fmt: skip


def stop_profile(recorders: list[subprocess.Popen[bytes]]) -> None:
    for r in recorders:
        if r.poll() is None:
            r.send_signal(signal.SIGINT)
    for r in recorders:
        try:
            r.wait(60)
        except subprocess.TimeoutExpired:
            r.kill()


def resyncs(log: Path, since: float) -> None:
    """The resyncs the controller logged (``event=resync``) since ``since``: each one's wall
    time, its listing's, and what it enqueued."""
    lines = [ln for ln in log_lines(log) if ln.get("event") == "resync"
             and _epoch(ln["time"]) >= since]  # fmt: skip
    for ln in lines:
        print(f"resync{' (full)' if ln.get('full') else ''}: {ln.get('listed')} models listed "
              f"in {ln.get('listed_s')} s, {ln.get('took_s')} s in all; enqueued "
              f"{ln.get('enqueued')}, moved by own writes only {ln.get('own_writes')}, behind "
              f"the write-back {ln.get('behind_write_back')}")  # fmt: skip
    if not lines:
        print("resync: none logged in the window")


def publishes(metrics_url: str) -> None:
    """How long the controller's publishes took over the whole run (its histogram)."""
    text = httpx.get(metrics_url, timeout=30).text
    count = metric(text, "sigserve_publish_seconds_count") or 0.0
    total = metric(text, "sigserve_publish_seconds_sum") or 0.0
    buckets = []
    for line in text.splitlines():
        if line.startswith("sigserve_publish_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((le, float(line.rsplit(" ", 1)[1])))
    over = ", ".join(f"> {le} s: {count - n:.0f}" for le, n in buckets
                     if le in ("0.5", "1.0", "5.0", "10.0"))  # fmt: skip
    print(f"publishes over the run: {count:.0f}, mean {total / max(count, 1):.2f} s; {over}")


def seconds(value: float | None) -> str:
    return f"{value:.2f} s" if value is not None else "not seen"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--versions", type=int, default=1, help="versions per model")
    parser.add_argument("--resync-interval", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=90.0,
                        help="seconds of steady state measured after priming")
    parser.add_argument("--webhooks", type=int, default=4,
                        help="versions registered during the window, each as a burst begins")
    parser.add_argument("--settle-timeout", type=float, default=600.0)
    parser.add_argument("--drain-timeout", type=float, default=3600.0,
                        help="seconds to wait for the write-back to drain after priming")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy both processes during the write-back into this directory")
    parser.add_argument("--profile-s", type=float, default=60.0)
    parser.add_argument("--mlflow-workers", type=int, default=1,
                        help="the MLflow server's worker processes (its own default: 4)")
    parser.add_argument("--prime-timeout", type=float, default=3600.0)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--build-only", action="store_true", help="build (or find) and stop")
    parser.add_argument("--listing-only", action="store_true",
                        help="time the resync's listing of the registry alone (no controller)")
    args = parser.parse_args()
    cached, model_id = registry(args.models, args.versions, args.rebuild)
    if args.build_only:
        return
    if args.listing_only:
        listing(cached)
        return
    home = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    shutil.copytree(cached, home, dirs_exist_ok=True)
    secrets = Secrets.load_or_create(home)
    mlflow_port, ctl_port = free_port(), free_port()
    tracking_uri = f"http://{HOST}:{mlflow_port}"
    ctl_url = f"http://{HOST}:{ctl_port}"
    admin = {"Authorization": f"Bearer {secrets.admin_token}"}
    server = mlflow_server(home, host=HOST, port=mlflow_port,
                           encryption_key=secrets.mlflow_encryption_key)  # fmt: skip
    # One worker as the local stack starts it; ``mlflow server``'s own default is 4.
    server.argv[server.argv.index("--workers") + 1] = str(args.mlflow_workers)
    ctl = controller(
        home, host=HOST, port=ctl_port, tracking_uri=tracking_uri,
        admin_token=secrets.admin_token, webhook_secret=secrets.webhook_secret,
        serving_token=secrets.serving_token, resync_interval_s=args.resync_interval,
    )  # fmt: skip
    ctl.env["SIGSERVE_DEFAULT_PROOF"] = "off"
    sampler: Sampler | None = None
    try:
        server.start().wait_healthy(180)
        began = time.monotonic()
        ctl.start()
        assert ctl.pid is not None and server.pid is not None
        sampler = Sampler(ctl.pid, server.pid, f"{ctl_url}/metrics").start()
        table = first_table(ctl_url, secrets.serving_token, args.prime_timeout)
        primed_s = time.monotonic() - began
        versions = sum(len(m["versions"]) for m in table["models"].values())
        primed = [ln for ln in log_lines(ctl.log_path) if ln.get("event") == "primed"]
        print(f"priming: first table {primed_s:.1f} s after the controller's start: "
              f"{len(table['models'])} models, {versions} versions; the controller's line: "
              f"{primed[-1]['message'] if primed else 'none'}; RSS "
              f"{psutil.Process(ctl.pid).memory_info().rss / 2**20:.0f} MB", flush=True)
        drain(sampler, f"{ctl_url}/metrics", args, {"controller": ctl.pid,
                                                    "mlflow": server.pid})  # fmt: skip
        settle = time.monotonic()
        while time.monotonic() - settle < args.settle_timeout and not sampler.quiet_for(5):
            time.sleep(1)
        quiet = sampler.quiet_for(5)
        print(f"after priming: {'quiet' if quiet else 'still busy'} "
              f"{time.monotonic() - began:.0f} s after the start "
              f"({time.monotonic() - settle:.0f} s after the write-back drained)", flush=True)

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri)
        window_from = time.time()
        registered = during_resyncs(sampler, client, model_id, args.models, args.window,
                                    args.webhooks)  # fmt: skip
        latencies = []
        at = [t for _, _, _, t in registered]
        for name, version, busy, _ in registered:
            to_decided, to_live = webhook_latency(ctl_url, admin, ctl.log_path, name, version)
            latencies.append(to_decided if to_decided is not None else float("inf"))
            print(f"webhook: {name} v{version} ({'during a burst' if busy else 'while quiet'}): "
                  f"receipt -> decided {seconds(to_decided)}, receipt -> published live "
                  f"{seconds(to_live)}")  # fmt: skip
        during = sorted(x for x, r in zip(latencies, registered, strict=True) if r[2])
        if during:
            print(f"webhooks during a burst: {len(during)}, receipt -> decided median "
                  f"{during[len(during) // 2]:.2f} s, max {during[-1]:.2f} s")  # fmt: skip
        controller_pct, mlflow_pct, reconciles = sampler.window(window_from)
        bursts = sampler.bursts(window_from)
        # "+N" is the burst's start in the window; a "w" marks one a registration of ours began.
        lengths = ", ".join(
            f"{b - a:.1f} (+{a - window_from:.0f}{' w' if any(0 <= a - t < 2 for t in at) else ''})"
            for a, b in bursts
        ) or "none"
        print(f"steady state over {args.window:.0f} s (resync every {args.resync_interval:.0f} s, "
              f"{len(registered)} registrations in it): bursts of activity (s): {lengths}; "
              f"reconcile passes {reconciles:.0f} ({reconciles / args.window:.1f}/s: a pass over "
              f"every model at that rate takes {args.models * args.window / max(1, reconciles):.0f}"
              f" s); CPU % of one core: controller {controller_pct:.1f}, mlflow "
              f"{mlflow_pct:.1f}; controller RSS "
              f"{psutil.Process(ctl.pid).memory_info().rss / 2**20:.0f} MB")  # fmt: skip
        resyncs(ctl.log_path, window_from)
        publishes(f"{ctl_url}/metrics")
    finally:
        if sampler is not None:
            sampler.stop()
        ctl.stop()
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The controller at rest: its CPU when nothing changes, and where it goes (issue 20).

    .venv/bin/python benchmarks/controller_idle.py [--models 1000] [--versions 1]
        [--resync-interval 30] [--window 90] [--profile DIR]

The registry of ``registry_scale.py`` (same cache), an ``mlflow server`` with one worker and a
controller on a fresh SQLite database (``SIGSERVE_DEFAULT_PROOF=off``, no Ray), started
unchanged: ``python -m controller`` from the working directory, which comes before
``PYTHONPATH`` on its ``sys.path``, so a before and after in one session runs this script from
each checkout (``PYTHONPATH`` alone does not change the controller's code). Once the first
table is out and the write-back has drained, nothing is registered, nothing scrapes
``/metrics`` and nothing long-polls. Over two windows of
``--window`` seconds the controller's CPU (% of one core) is sampled from ``/proc`` every
0.25 s: in all, and in the resyncs (each resync's log line gives its end and wall time; the
samples inside are its share; the passes a full resync enqueues run after it, so they are in
"the rest"). ``--full-resync-interval`` brings the full pass into the windows. ``--profile
DIR`` records the controller with py-spy over the first window (``--rate 50``, ``--gil``: the
thread holding the GIL only, so Python running, not threads waiting), raw stacks in
``DIR/controller.txt``, and prints the leaf functions and the innermost controller frames.

``--full-passes N`` then runs N full passes as an operator asks for one (``POST
/admin/reconcile``: every model enqueued), one after the other, each timed from the request
until nothing waits or runs in the worker (``/metrics`` read once a second): its wall time, the
controller's CPU (``/proc``) and per model, and each resync that ran beside it. The first after
the start finds no pass kept to compare with (``controller/unchanged.py``); the later ones are
what every full pass costs at rest. With ``--profile`` the last one is recorded too
(``DIR/full-pass.txt``). ``--window 0`` skips the windows.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from registry_scale import HOST, _epoch, first_table, log_lines, metric, registry

from sigserve.ports import free_port
from sigserve.stack import Secrets, controller, mlflow_server


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def drained(metrics_url: str, timeout_s: float) -> float:
    """Seconds until the write-back lane has nothing behind or queued."""
    started = time.monotonic()
    with httpx.Client(timeout=30) as http:
        while time.monotonic() - started < timeout_s:
            text = http.get(metrics_url).text
            behind = metric(text, "sigserve_write_back_backlog", state="behind")
            queued = metric(text, "sigserve_write_back_backlog", state="queued")
            if behind == 0 and queued == 0:
                return time.monotonic() - started
            time.sleep(2)
    raise SystemExit(f"the write-back did not drain in {timeout_s:.0f} s")


def sampled(pid: int, seconds: float) -> list[tuple[float, float]]:
    """(epoch, CPU seconds) every 0.25 s for ``seconds``."""
    out: list[tuple[float, float]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append((time.time(), cpu_s(pid)))
        time.sleep(0.25)
    out.append((time.time(), cpu_s(pid)))
    return out


def resync_spans(log: Path, since: float) -> list[tuple[float, float, float]]:
    """(start, end, took_s) of each resync logged since ``since`` (its line is its end)."""
    spans = []
    for ln in log_lines(log):
        if ln.get("event") == "resync" and _epoch(ln["time"]) >= since:
            end = _epoch(ln["time"])
            spans.append((end - float(ln["took_s"]), end, float(ln["took_s"])))
            print(f"  resync{' (full)' if ln.get('full') else ''}: {ln['listed']} listed in "
                  f"{ln['listed_s']} s, {ln['enqueued']} enqueued, {ln['took_s']} s in all")
    return spans


def full_passes(ctl_url: str, admin_token: str, pid: int, log: Path, models: int, n: int,
                profile: Path | None, pyspy: str) -> None:
    """``n`` full passes asked for by the admin API, one after the other (the module's doc)."""
    with httpx.Client(base_url=ctl_url, timeout=120,
                      headers={"Authorization": f"Bearer {admin_token}"}) as http:  # fmt: skip
        for i in range(n):
            spy = None
            if profile is not None and i == n - 1:
                spy = subprocess.Popen(
                    [pyspy, "record", "--pid", str(pid), "--threads", "--nonblocking", "--gil",
                     "--rate", "50", "--duration", "3600", "--format", "raw",
                     "-o", str(profile / "full-pass.txt")],
                    stdout=subprocess.DEVNULL, stderr=(profile / "pyspy-full.log").open("wb"),
                )  # fmt: skip
                time.sleep(2)  # attached before the pass begins
            since, cpu0, t0 = time.time(), cpu_s(pid), time.monotonic()
            http.post("/admin/reconcile").raise_for_status()
            while True:
                time.sleep(1.0)
                text = http.get("/metrics").text
                waiting = metric(text, "sigserve_reconcile_queue_depth") or 0.0
                running = metric(text, "sigserve_reconcile_in_flight") or 0.0
                if waiting == 0 and running == 0:
                    break
            wall, used = time.monotonic() - t0, cpu_s(pid) - cpu0
            print(f"full pass {i + 1}: {wall:.1f} s wall, controller CPU {used:.2f} s "
                  f"({1000 * used / models:.2f} ms per model, {100 * used / wall:.0f}% of a "
                  f"core while it ran)", flush=True)
            resync_spans(log, since)
            if spy is not None and profile is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
                summarise(profile / "full-pass.txt")
            time.sleep(5)


def summarise(raw: Path, top: int = 25) -> None:
    """The profile's leaf functions, and the innermost controller/ frame of each sample."""
    leaves: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaves[frames[-1]] += n
        mine = [f for f in frames if "controller/" in f or "wire/" in f]
        ours[mine[-1] if mine else "(no controller frame) " + frames[min(2, len(frames) - 1)]] += n
    print(f"profile: {total} samples of the thread holding the GIL (50 a second)")
    for title, counter in (("leaf", leaves), ("innermost controller frame", ours)):
        print(f"  by {title}:")
        for name, n in counter.most_common(top):
            print(f"    {n:6d} {100 * n / max(1, total):5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=1)
    parser.add_argument("--resync-interval", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=90.0)
    parser.add_argument("--full-resync-interval", type=float, default=None,
                        help="SIGSERVE_FULL_RESYNC_INTERVAL_S (the controller's own: 600)")
    parser.add_argument("--drain-timeout", type=float, default=1200.0)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--full-passes", type=int, default=0)
    parser.add_argument("--pyspy", default=os.environ.get("SIGSERVE_PYSPY", "py-spy"))
    args = parser.parse_args()
    cached, _ = registry(args.models, args.versions, False)
    home = Path(tempfile.mkdtemp(prefix="idle-", dir="/tmp"))
    shutil.copytree(cached, home, dirs_exist_ok=True)
    secrets = Secrets.load_or_create(home)
    mlflow_port, ctl_port = free_port(), free_port()
    tracking_uri = f"http://{HOST}:{mlflow_port}"
    ctl_url = f"http://{HOST}:{ctl_port}"
    server = mlflow_server(home, host=HOST, port=mlflow_port,
                           encryption_key=secrets.mlflow_encryption_key)  # fmt: skip
    server.argv[server.argv.index("--workers") + 1] = "1"
    ctl = controller(
        home, host=HOST, port=ctl_port, tracking_uri=tracking_uri,
        admin_token=secrets.admin_token, webhook_secret=secrets.webhook_secret,
        serving_token=secrets.serving_token, resync_interval_s=args.resync_interval,
    )  # fmt: skip
    ctl.env["SIGSERVE_DEFAULT_PROOF"] = "off"
    if args.full_resync_interval is not None:
        ctl.env["SIGSERVE_FULL_RESYNC_INTERVAL_S"] = str(args.full_resync_interval)
    try:
        server.start().wait_healthy(180)
        began = time.monotonic()
        ctl.start()
        assert ctl.pid is not None
        first_table(ctl_url, secrets.serving_token, 1800)
        print(f"first table {time.monotonic() - began:.1f} s after the start", flush=True)
        took = drained(f"{ctl_url}/metrics", args.drain_timeout)
        print(f"write-back drained {took:.0f} s later", flush=True)
        time.sleep(5)
        spy = None
        if args.profile is not None and args.window > 0:
            args.profile.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(
                [args.pyspy, "record", "--pid", str(ctl.pid), "--threads", "--nonblocking",
                 "--gil", "--rate", "50", "--duration", str(int(args.window)), "--format", "raw",
                 "-o", str(args.profile / "controller.txt")],
                stdout=subprocess.DEVNULL, stderr=(args.profile / "pyspy.log").open("wb"),
            )  # fmt: skip
        for label in ("window 1", "window 2") if args.window > 0 else ():
            since = time.time()
            samples = sampled(ctl.pid, args.window)
            if spy is not None:
                spy.wait(60)
                spy = None
            wall = samples[-1][0] - samples[0][0]
            used = samples[-1][1] - samples[0][1]
            spans = resync_spans(ctl.log_path, since)
            in_resync = 0.0
            for (a, ca), (b, cb) in itertools.pairwise(samples):
                if any(s - 0.25 <= a and b <= e + 0.25 for s, e, _ in spans):
                    in_resync += cb - ca
            print(f"{label}: controller CPU {100 * used / wall:.2f}% of a core over {wall:.0f} s "
                  f"({used:.2f} s); in the {len(spans)} resyncs "
                  f"({', '.join(f'{s[2]:.2f} s' for s in spans) or 'none'}): {in_resync:.2f} s; "
                  f"the rest {100 * (used - in_resync) / wall:.2f}%; RSS "
                  f"{psutil.Process(ctl.pid).memory_info().rss / 2**20:.0f} MB", flush=True)
        if args.profile is not None and args.window > 0:
            summarise(args.profile / "controller.txt")
        full_passes(ctl_url, secrets.admin_token, ctl.pid, ctl.log_path, args.models,
                    args.full_passes, args.profile, args.pyspy)  # fmt: skip
    finally:
        ctl.stop()
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

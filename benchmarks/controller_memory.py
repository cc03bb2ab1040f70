"""Where the controller's memory goes over a large registry (issue 20: < 500 MB at 10,000 models
x 50,000 versions).

    .venv/bin/python benchmarks/controller_memory.py [--models 2000] [--versions 5]
        [--window 60] [--trace] [--arena-max N]

The registry of ``benchmarks/registry_scale.py`` (built once, cached in
``~/.cache/sigserve-registry-scale``), an ``mlflow server`` on a copy of it and a controller on
a fresh SQLite database (``SIGSERVE_DEFAULT_PROOF=off``, no Ray), as ``make registry-scale``
runs them. The controller is started through this file (``--child``), which runs
``python -m controller``'s ``main`` after setting up what answers the questions below; the
controller itself is unchanged.

Printed: the controller's RSS every 10 s and its peak, and at two moments, the first routing
table and the end of ``--window`` seconds after it, what is live there:

- the objects the garbage collector tracks, by type (count), the largest first;
- with ``--trace`` (``tracemalloc``, 16 frames, started once ``--trace-from`` of the models
  were reconciled: traced from the start, priming ran ~8x slower here): the allocations made
  since and still live, summed by the controller's or wire's own line that made them (the
  innermost frame in ``controller/`` or ``wire/``: the holder), and by file:line. What
  tracemalloc keeps adds to the RSS: take RSS figures from a run without it;
- at the end, the RSS before and after ``malloc_trim(0)``: what glibc held as free memory not
  returned (fragmentation), against what live objects hold.

With ``--register`` (issue 20's jump of ~65 MB at 10,000 x 5 when the window's first
registration went out), between those two: one version registered, a report once its table is
published (``sigserve_routing_table_revision`` moved), and another once a replica's long-poll
(schema 3) took that table, with what each step kept against the one before (by holder) and,
traced, the peak of traced memory during the step (``tracemalloc.get_traced_memory``), and the
body's size as answered (on the wire, and decoded).

``--register N`` (N > 1) goes on with N - 1 more, each into another model, each once published
and polled: one line per publish with the RSS (the sampler's peak during it, and after a
``gc.collect``), what the publish took (``sigserve_publish_seconds``) and the peak and
traced memory. It tells a heap kept once (a high-water mark: the RSS steps up at the first
publish and stays) from one that grows at each publish.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

FRAMES = 16
SHOWN = 25


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _holder(tb: tracemalloc.Traceback) -> str:
    """The innermost frame of the controller's or wire's own code, else the innermost frame."""
    for frame in reversed(tb):  # tracemalloc keeps the most recent call last
        for part in ("/controller/", "/wire/"):
            if part in frame.filename:
                return f"{part[1:]}{frame.filename.split(part, 1)[1]}:{frame.lineno}"
    frame = tb[-1]
    return f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}"


def _report(label: str, trim: bool) -> dict[str, Any]:
    gc.collect()
    report: dict[str, Any] = {"label": label, "rss_mb": round(_rss_mb(), 1)}
    types = Counter(type(o).__name__ for o in gc.get_objects())
    report["gc_objects"] = sum(types.values())
    report["types"] = types.most_common(SHOWN)
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot()
        holders: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        for stat in snapshot.statistics("traceback"):
            key = _holder(stat.traceback)
            holders[key] += stat.size
            counts[key] += stat.count
        report["traced_mb"] = round(sum(holders.values()) / 2**20, 1)
        # The peak since the report before: what a step took while it ran, given back or not.
        report["traced_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.reset_peak()
        report["holders"] = [(k, round(v / 2**20, 2), counts[k])
                             for k, v in holders.most_common(SHOWN)]  # fmt: skip
        report["all_holders"] = {k: v for k, v in holders.items()}
        report["lines"] = [(str(s.traceback[0]), round(s.size / 2**20, 2), s.count)
                           for s in snapshot.statistics("lineno")[:SHOWN]]  # fmt: skip
        del snapshot
    if trim:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        report["rss_after_trim_mb"] = round(_rss_mb(), 1)
    return report


def child(asks: Path) -> None:
    """The controller, with a thread that answers ``<asks>/<label>.ask`` files with reports."""

    def answer() -> None:
        while True:
            for ask in sorted(asks.glob("*.ask")):
                label = ask.stem
                if label == "trace":
                    tracemalloc.start(FRAMES)
                    ask.unlink()
                    continue
                report = _report(label, trim=label.endswith("trim"))
                (asks / f"{label}.json").write_text(json.dumps(report))
                ask.unlink()
            time.sleep(0.5)

    threading.Thread(target=answer, daemon=True).start()
    # This file's directory holds benchmarks named like controller modules (priming.py).
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
    from controller.__main__ import main

    main()


def _ask(asks: Path, label: str, timeout_s: float = 900) -> dict[str, Any]:
    (asks / f"{label}.ask").write_text("")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = asks / f"{label}.json"
        if done.exists():
            try:
                answer: dict[str, Any] = json.loads(done.read_text())
                return answer
            except ValueError:
                pass  # still being written
        time.sleep(0.5)
    raise TimeoutError(f"no memory report {label!r} within {timeout_s:.0f} s")


def trace_later(asks: Path, metrics_url: str, reconciles: float) -> None:
    """Ask the controller to start tracing once it reconciled ``reconciles`` models."""
    import httpx

    while True:
        try:
            text = httpx.get(metrics_url, timeout=10).text
        except httpx.HTTPError:
            text = ""
        done = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("sigserve_reconciles_total{"))  # fmt: skip
        if done >= reconciles:
            (asks / "trace.ask").write_text("")
            print(f"  tracing from {done:.0f} reconciles", flush=True)
            return
        time.sleep(1)


def _print(report: dict[str, Any], before: dict[str, Any] | None = None) -> None:
    print(f"\n== {report['label']}: RSS {report['rss_mb']:.0f} MB"
          + (f", traced {report['traced_mb']:.0f} MB" if "traced_mb" in report else "")
          + (f" (traced peak since the report before {report['traced_peak_mb']:.0f} MB)"
             if "traced_peak_mb" in report else "")
          + (f", after malloc_trim(0) {report['rss_after_trim_mb']:.0f} MB"
             if "rss_after_trim_mb" in report else "")
          + f"; {report['gc_objects']:,} gc-tracked objects")  # fmt: skip
    print("   types: " + ", ".join(f"{t} {n:,}" for t, n in report["types"][:15]))
    for title, key in (("holder (innermost controller/wire frame)", "holders"),
                       ("file:line", "lines")):  # fmt: skip
        if key in report:
            print(f"   by {title}: MB, blocks")
            for where, mb, count in report[key]:
                print(f"     {mb:8.2f} {count:9,}  {where}")
    if before is not None:
        print(f"   against {before['label']}: RSS {report['rss_mb'] - before['rss_mb']:+.0f} MB")
        if "all_holders" in report and "all_holders" in before:
            was, now = before["all_holders"], report["all_holders"]
            moved = sorted(((now.get(k, 0) - was.get(k, 0), k) for k in {*was, *now}),
                           key=lambda d: -abs(d[0]))[:SHOWN]  # fmt: skip
            print(
                f"   traced {sum(now.values()) / 2**20 - sum(was.values()) / 2**20:+.1f} MB; "
                "by holder, MB:"
            )
            for delta, where in moved:
                if abs(delta) >= 2**16:
                    print(f"     {delta / 2**20:+8.2f}  {where}")
    sys.stdout.flush()


def _revision(metrics_url: str) -> float:
    import httpx

    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if line.startswith("sigserve_routing_table_revision "):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def _publish_seconds(metrics_url: str) -> tuple[float, float]:
    """(sum, count) of ``sigserve_publish_seconds``."""
    import httpx

    found = {"sum": 0.0, "count": 0.0}
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        for part in found:
            if line.startswith(f"sigserve_publish_seconds_{part} "):
                found[part] = float(line.rsplit(" ", 1)[1])
    return found["sum"], found["count"]


def register_more(
    asks: Path,
    ctl_url: str,
    tracking_uri: str,
    token: str,
    model_id: str,
    models: int,
    count: int,
    rss: list[tuple[float, float]],
) -> None:
    """``count`` more versions, one at a time into other models, each published and polled;
    a line each: RSS (the sampler's peak during the step, and after ``gc.collect``), the
    publishes' time, traced memory."""
    import httpx
    from mlflow import MlflowClient

    metrics = f"{ctl_url}/metrics"
    client = MlflowClient(tracking_uri)
    auth = {"Authorization": f"Bearer {token}"}
    print(f"\n{count} more registrations, one at a time:", flush=True)
    for i in range(count):
        held = _revision(metrics)
        spent, n = _publish_seconds(metrics)
        began = time.monotonic()
        seen = len(rss)
        name = f"scale_{models - 2 - i:05d}"
        version = client.create_model_version(
            name, f"models:/{model_id}", model_id=model_id
        ).version
        while _revision(metrics) <= held:
            if time.monotonic() - began > 300:
                raise TimeoutError(f"{name} v{version} not published within 300 s")
            time.sleep(0.2)
        published_s = time.monotonic() - began
        with httpx.Client(timeout=120, headers=auth) as http:
            http.get(
                f"{ctl_url}/routing-table", params={"after": -1, "schema": 3}
            ).raise_for_status()
        spent2, n2 = _publish_seconds(metrics)
        report = _ask(asks, f"more-{i + 1}")
        peak = max((mb for _, mb in rss[seen:]), default=float("nan"))
        print(f"  {i + 1:2d}. {name} v{version}: published {published_s:.1f} s after the "
              f"registration; RSS peak {peak:.0f} MB, {report['rss_mb']:.0f} MB after; "
              f"{n2 - n:.0f} publishes, {spent2 - spent:.2f} s"
              + (f"; traced {report['traced_mb']:.0f} MB (peak {report['traced_peak_mb']:.0f})"
                 if "traced_mb" in report else "")
              + f"; load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip


def register(
    asks: Path,
    ctl_url: str,
    tracking_uri: str,
    token: str,
    model_id: str,
    models: int,
    first: dict[str, Any],
) -> dict[str, Any]:
    """One version registered, reported once published and once a replica's poll took it."""
    import httpx
    from mlflow import MlflowClient

    metrics = f"{ctl_url}/metrics"
    held = _revision(metrics)
    began = time.monotonic()
    name = f"scale_{models - 1:05d}"
    version = (
        MlflowClient(tracking_uri)
        .create_model_version(name, f"models:/{model_id}", model_id=model_id)
        .version
    )
    while _revision(metrics) <= held:
        if time.monotonic() - began > 300:
            raise TimeoutError(f"{name} v{version} not published within 300 s")
        time.sleep(0.2)
    print(f"\n{name} v{version} registered and published in {time.monotonic() - began:.1f} s "
          f"(revision {held:.0f} -> {_revision(metrics):.0f})", flush=True)  # fmt: skip
    published = _ask(asks, "published")
    _print(published, first)
    auth = {"Authorization": f"Bearer {token}"}
    # As a replica asks (httpx's own Accept-Encoding), and once more as a caller that takes
    # no encoding, so the plain body's cost shows too.
    with httpx.Client(timeout=120, headers=auth) as http:
        r = http.get(f"{ctl_url}/routing-table", params={"after": -1, "schema": 3})
        r.raise_for_status()
        wire = int(r.headers.get("content-length", len(r.content)))
        print(f"\nreplica's poll: {r.headers.get('content-encoding', 'identity')}, "
              f"{wire / 2**20:.1f} MB on the wire, {len(r.content) / 2**20:.1f} MB decoded "
              f"({len(r.content) / max(1, wire):.1f}x)", flush=True)  # fmt: skip
        del r
    polled = _ask(asks, "polled")
    _print(polled, published)
    return polled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=2000)
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument(
        "--window",
        type=float,
        default=60.0,
        help="seconds after the first table before the last report",
    )
    parser.add_argument("--resync-interval", type=float, default=30.0)
    parser.add_argument("--trace", action="store_true", help="tracemalloc (slower, larger)")
    parser.add_argument(
        "--trace-from",
        type=float,
        default=0.9,
        help="share of the models reconciled when tracing starts",
    )
    parser.add_argument("--arena-max", type=int, default=0, help="MALLOC_ARENA_MAX (0: unset)")
    parser.add_argument("--prime-timeout", type=float, default=3600.0)
    parser.add_argument(
        "--register",
        type=int,
        nargs="?",
        const=1,
        default=0,
        help="after the first table, register a version: reports once it is "
        "published and once a replica's poll took it; N: then N - 1 more, a line each",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return

    import psutil
    from registry_scale import HOST, first_table, registry

    from sigserve.ports import free_port
    from sigserve.stack import Secrets, controller, mlflow_server

    cached, model_id = registry(args.models, args.versions, rebuild=False)
    home = Path(tempfile.mkdtemp(prefix="cm-", dir="/tmp"))
    asks = home / "memory"
    asks.mkdir()
    shutil.copytree(cached, home, dirs_exist_ok=True)
    secrets = Secrets.load_or_create(home)
    mlflow_port, ctl_port = free_port(), free_port()
    server = mlflow_server(home, host=HOST, port=mlflow_port,
                           encryption_key=secrets.mlflow_encryption_key)  # fmt: skip
    ctl = controller(
        home, host=HOST, port=ctl_port, tracking_uri=f"http://{HOST}:{mlflow_port}",
        admin_token=secrets.admin_token, webhook_secret=secrets.webhook_secret,
        serving_token=secrets.serving_token, resync_interval_s=args.resync_interval,
    )  # fmt: skip
    ctl.argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(asks)]
    ctl.env["SIGSERVE_DEFAULT_PROOF"] = "off"
    if args.arena_max:
        ctl.env["MALLOC_ARENA_MAX"] = str(args.arena_max)
    rss: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample(pid: int, began: float) -> None:
        proc = psutil.Process(pid)
        while not stop.wait(1.0):
            try:
                rss.append((time.monotonic() - began, proc.memory_info().rss / 2**20))
            except psutil.Error:
                return
            if len(rss) % 10 == 0:
                print(f"  {rss[-1][0]:6.0f} s  RSS {rss[-1][1]:6.0f} MB", flush=True)

    print(f"controller memory: {args.models} models x {args.versions} versions, "
          f"trace={'on' if args.trace else 'off'}, MALLOC_ARENA_MAX="
          f"{args.arena_max or 'unset'}; load average {os.getloadavg()}", flush=True)  # fmt: skip
    try:
        server.start().wait_healthy(180)
        began = time.monotonic()
        ctl.start()
        assert ctl.pid is not None
        threading.Thread(target=sample, args=(ctl.pid, began), daemon=True).start()
        if args.trace:
            threading.Thread(target=trace_later, args=(asks, f"http://{HOST}:{ctl_port}/metrics",
                             args.models * args.trace_from), daemon=True).start()  # fmt: skip
        table = first_table(f"http://{HOST}:{ctl_port}", secrets.serving_token,
                            args.prime_timeout)  # fmt: skip
        versions = sum(len(m["versions"]) for m in table["models"].values())
        del table
        primed_s = time.monotonic() - began
        peak = max((mb for _, mb in rss), default=0.0)
        print(f"first table {primed_s:.0f} s after the start ({versions} versions); RSS peak "
              f"so far {peak:.0f} MB", flush=True)  # fmt: skip
        last = _ask(asks, "first-table")
        _print(last)
        if args.register:
            last = register(asks, f"http://{HOST}:{ctl_port}", f"http://{HOST}:{mlflow_port}",
                            secrets.serving_token, model_id, args.models, last)  # fmt: skip
        if args.register > 1:
            register_more(asks, f"http://{HOST}:{ctl_port}", f"http://{HOST}:{mlflow_port}",
                          secrets.serving_token, model_id, args.models, args.register - 1,
                          rss)  # fmt: skip
        time.sleep(max(0.0, args.window - (time.monotonic() - began - primed_s)))
        end = _ask(asks, "end-trim")
        _print(end, last)
        peak = max((mb for _, mb in rss), default=0.0)
        print(f"\nRSS: peak {peak:.0f} MB over {time.monotonic() - began:.0f} s; load average "
              f"{os.getloadavg()}", flush=True)  # fmt: skip
    finally:
        stop.set()
        ctl.stop()
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

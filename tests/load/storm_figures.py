"""The storm's figures, computed from what the controller and MLflow already expose.

Nothing here reaches into the controller: every figure comes from a surface a user has (the
admin API's audit log, ``/metrics``, the controller's JSON log lines, MLflow's own
``creation_timestamp``) or from the operating system (the processes' CPU and memory, a
profile taken with py-spy when one is asked for). So the same figures can be taken of an older
controller, for a before and after (``docs/benchmarks.md``, "Decisions at registry scale").

- registration -> checked: the version's first decision event (pending "being proven", or a
  verdict) against MLflow's ``creation_timestamp``;
- registration -> decided: its first ``live`` or ``quarantined`` decision event;
- webhook -> servable: the ``model_version.created`` delivery's receipt (its log line) to the
  first published revision that carries the version live;
- webhooks per version, and how many were the controller's own writes coming back (tag and
  alias events: nothing else in the storm writes tags or aliases), and how the controller took
  them (``accepted``: enqueued; ``own_write``: recognised as its own, not enqueued);
- decided twice: a version with two decision events for the same outcome (state and reasons).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

FINAL = ("live", "quarantined")
OWN_WRITES = (
    "model_version_tag.set",
    "model_version_tag.deleted",
    "model_version_alias.created",
    "model_version_alias.deleted",
)
Key = tuple[str, str]


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank percentile (``q`` in 0..100); NaN of nothing."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def spread(values: list[float]) -> str:
    return (f"p50 {percentile(values, 50):.2f}s p95 {percentile(values, 95):.2f}s "
            f"max {max(values, default=math.nan):.2f}s (n={len(values)})")  # fmt: skip


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@dataclass
class Decision:
    at: float
    state: str
    reasons: tuple[str, ...]


@dataclass
class StormFigures:
    registered: dict[Key, float] = field(default_factory=dict)
    decisions: dict[Key, list[Decision]] = field(default_factory=dict)
    webhooks: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)
    created_webhook_at: dict[Key, float] = field(default_factory=dict)
    live_published_at: dict[Key, float] = field(default_factory=dict)
    publishes: list[float] = field(default_factory=list)
    # Per model, its reconcile passes' log lines: (time, changed, actor).
    reconciles: dict[str, list[tuple[float, bool, str]]] = field(default_factory=dict)

    def checked_s(self) -> list[float]:
        return [ds[0].at - self.registered[k] for k, ds in self.decisions.items()
                if ds and k in self.registered]  # fmt: skip

    def first_final(self, key: Key) -> Decision | None:
        return next((d for d in self.decisions.get(key, []) if d.state in FINAL), None)

    def decided_s(self) -> list[float]:
        found = ((k, self.first_final(k)) for k in self.registered)
        return [d.at - self.registered[k] for k, d in found if d is not None]

    def servable_s(self) -> list[float]:
        """Webhook receipt -> the first revision carrying the version live."""
        return [self.live_published_at[k] - at for k, at in self.created_webhook_at.items()
                if k in self.live_published_at]  # fmt: skip

    def decided_twice(self) -> list[Key]:
        twice = []
        for key, ds in self.decisions.items():
            outcomes = Counter((d.state, d.reasons) for d in ds)
            if any(n > 1 for n in outcomes.values()):
                twice.append(key)
        return twice

    def decisions_per_s(self) -> float:
        finals = [d.at for k in self.registered if (d := self.first_final(k)) is not None]
        if not finals or not self.registered:
            return math.nan
        return len(finals) / max(1e-9, max(finals) - min(self.registered.values()))

    def slowest(self, n: int = 8) -> str:
        """The ``n`` versions slowest from registration to decided, each with what happened
        to it on the way (s after its registration): its webhook's receipt, its model's passes
        (``*``: the pass changed something; passes that changed nothing and worked for no
        webhook log at DEBUG and do not show), its decision, the first revision carrying it live.
        So a slow version shows what it waited for: a late webhook, a queue (no pass for a
        while), a slow pass, or passes that did not decide it."""
        rows = []
        for key, reg in self.registered.items():
            final = self.first_final(key)
            if final is not None:
                rows.append((final.at - reg, key, reg, final))
        rows.sort(reverse=True)
        start = min(self.registered.values(), default=0.0)
        lines = [f"storm: the {min(n, len(rows))} slowest to decided (s after registration):"]
        for took, key, reg, final in rows[:n]:
            passes = [
                f"{at - reg:+.2f}{'*' if changed else ''}"
                + ("(resync)" if actor == "resync" else "")
                for at, changed, actor in self.reconciles.get(key[0], [])
                if reg - 1 <= at <= final.at + 1
            ]
            hook = self.created_webhook_at.get(key)
            live = self.live_published_at.get(key)
            lines.append(
                f"  {key[0]}/{key[1]}: {took:.2f}s, registered at +{reg - start:.1f}s of the "
                f"storm; webhook {'-' if hook is None else f'{hook - reg:+.2f}'}; passes of "
                f"the model {' '.join(passes) or '-'}; {final.state} {final.at - reg:+.2f}; "
                f"published live {'-' if live is None else f'{live - reg:+.2f}'}"
            )
        return "\n".join(lines)

    def report(self, versions: int) -> str:
        own = sum(n for event, n in self.webhooks.items() if event in OWN_WRITES)
        total = sum(self.webhooks.values())
        by_event = ", ".join(f"{e} {n}" for e, n in sorted(self.webhooks.items()))
        by_result = ", ".join(f"{r} {n}" for r, n in sorted(self.results.items()))
        return "\n".join([
            f"storm: registration -> checked (first decision event): {spread(self.checked_s())}",
            f"storm: registration -> decided (live/quarantined): {spread(self.decided_s())}",
            f"storm: webhook receipt -> servable (published live): {spread(self.servable_s())}",
            f"storm: decisions per second (first registration -> last verdict): "
            f"{self.decisions_per_s():.1f}",
            f"storm: webhooks received {total} ({total / versions:.2f} per version; "
            f"{own} = {own / versions:.2f} per version were the controller's own tag/alias "
            f"writes): {by_event}; taken as: {by_result}",
            f"storm: revisions published {len(self.publishes)}; versions decided twice "
            f"{len(self.decided_twice())}",
        ])  # fmt: skip


def registered_at(client: Any, names: list[str]) -> dict[Key, float]:
    """MLflow's ``creation_timestamp`` of every version (s since the epoch)."""
    found: dict[Key, float] = {}
    for name in names:
        for v in client.search_model_versions(f"name='{name}'", max_results=1000):
            found[(name, str(v.version))] = v.creation_timestamp / 1000
    return found


def decision_events(url: str, headers: dict[str, str], names: list[str]
                    ) -> dict[Key, list[Decision]]:
    """Every version's decision events from the audit log, oldest first."""
    found: dict[Key, list[Decision]] = {}
    with httpx.Client(timeout=60, headers=headers) as http:
        for name in names:
            before: int | None = None
            while True:
                params: dict[str, Any] = {"limit": 500}
                if before is not None:
                    params["before"] = before
                body = http.get(f"{url}/admin/models/{name}/events", params=params).json()
                for e in body["events"]:
                    after = e.get("after") or {}
                    if e["kind"] != "decision" or e["version"] is None or "state" not in after:
                        continue
                    found.setdefault((name, e["version"]), []).append(
                        Decision(_epoch(e["at"]), after["state"], tuple(after.get("reasons", [])))
                    )
                before = body["next"]
                if before is None:
                    break
    for ds in found.values():
        ds.sort(key=lambda d: d.at)
    return found


def log_lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(errors="replace") as f:
        for line in f:
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except ValueError:
                    continue


def read_log(figures: StormFigures, path: Path, names: set[str], since: float) -> None:
    """Webhooks received and revisions published, from the controller's JSON log lines."""
    for line in log_lines(path):
        at = _epoch(line["time"]) if "time" in line else 0.0
        if at < since:
            continue
        if line.get("event") == "webhook" and line.get("result") != "duplicate":
            if line.get("model") not in names:
                continue
            figures.webhooks[line.get("mlflow_event", "?")] += 1
            figures.results[line.get("result", "?")] += 1
            if line.get("mlflow_event") == "model_version.created" and line.get("version"):
                figures.created_webhook_at.setdefault((line["model"], line["version"]), at)
        elif line.get("event") == "reconcile" and line.get("model") in names:
            figures.reconciles.setdefault(line["model"], []).append(
                (at, bool(line.get("changed")), str(line.get("actor", "")))
            )
        elif line.get("event") == "publish":
            figures.publishes.append(at)
            for change in line.get("changes", []):
                target, _, state = change.partition("=")
                name, _, version = target.partition("/")
                if state == "live" and name in names:
                    figures.live_published_at.setdefault((name, version), at)
    # A revision changing more than the log line shows ("+N more") carries the rest unnamed:
    # such a version went out with the first revision after its live decision.
    publishes = sorted(figures.publishes)
    for key, ds in figures.decisions.items():
        live = next((d.at for d in ds if d.state == "live"), None)
        if live is None or key in figures.live_published_at:
            continue
        after = next((p for p in publishes if p >= live - 0.001), None)
        if after is not None:
            figures.live_published_at[key] = after


def histogram_quantiles(metrics_text: str, name: str) -> str:
    """Bucket bounds holding p50 and p95 of a Prometheus histogram, from ``/metrics``."""
    buckets: list[tuple[float, float]] = []
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((math.inf if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return f"{name}: no observations"
    total = buckets[-1][1]

    def bound(q: float) -> str:
        le = next(le for le, n in buckets if n >= q * total)
        return f"<= {le:g}s"

    return f"{name}: n={total:.0f}, p50 {bound(0.5)}, p95 {bound(0.95)}"


def mlflow_server_pids() -> list[int]:
    """This process's ``mlflow server`` child and everything it started (its workers)."""
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "mlflow" in cmd and "server" in cmd:
            return [child.pid] + [c.pid for c in child.children(recursive=True)]
    return []


def _cpu_s(pids: list[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            found[pid] = t.user + t.system
        except psutil.Error:
            continue
    return found


@contextmanager
def cpu_share(pids: dict[str, list[int]]) -> Iterator[dict[str, float]]:
    """Each group's CPU over the block, as % of one core (filled in when the block ends)."""
    before = {group: _cpu_s(p) for group, p in pids.items()}
    started = time.monotonic()
    shares: dict[str, float] = {}
    yield shares
    wall = time.monotonic() - started
    for group, p in pids.items():
        after = _cpu_s(p)
        used = sum(after[pid] - before[group].get(pid, 0.0) for pid in after)
        shares[group] = 100 * used / wall


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


@contextmanager
def profiled(pids: dict[str, int], out: Path | None) -> Iterator[None]:
    """py-spy recording each process (with --idle: waiting shows) while the block runs; raw
    (collapsed) stacks in ``out/<name>.txt``, summarised by ``benchmarks/storm_profile.py``."""
    if out is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    spy = os.environ.get("SIGSERVE_PYSPY", "py-spy")
    recorders = [
        subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--idle", "--threads", "--nonblocking",
             "--rate", "50", "--format", "raw", "-o", str(out / f"{name}.txt"),
             *(["--subprocesses"] if name == "mlflow" else [])],
            stdout=subprocess.DEVNULL, stderr=(out / f"{name}.log").open("wb"),
        )
        for name, pid in pids.items()
    ]  # fmt: skip
    try:
        yield
    finally:
        for r in recorders:
            r.send_signal(signal.SIGINT)
        for r in recorders:
            try:
                r.wait(60)
            except subprocess.TimeoutExpired:
                r.kill()

"""What the processes under a benchmark are and what they spend, read from /proc: a label for
each (Ray's actors by their process title), the memory (PSS) of each part, the CPU each spent
per request over a run, and the ``RAY_SERVE_*`` switches the raylet started with. Shared by
``serving_throughput.py``, ``wrk_rounds.py``, ``tensor_throughput.py`` and ``many_versions.py``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from registration_latency import _descendants, _name, _pss_mb

# --- labels and memory ---------------------------------------------------------------------------


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


def ray_label(pid: int) -> str:
    """A Ray worker by its process title (``ray::ServeReplica:app:Deployment``, ``ray::IDLE``),
    another process by ``registration_latency``'s names, else by the program or script it runs."""
    cmd = cmdline(pid)
    if cmd.startswith("ray::"):
        # An actor's title ends with the method it is running (``ray::ServeController.run``).
        return cmd.split()[0].split(".")[0]
    label = _name(pid)
    if not cmd.startswith(label):
        return label
    words = cmd.split()
    if any(Path(w).name == "mlserver" for w in words[:3]):
        return "mlserver"
    scripts = [w for w in words[1:4] if w.endswith(".py")]
    return Path(scripts[0] if scripts else words[0]).name if words else label


def memory_report(groups: dict[str, Iterable[int]]) -> list[tuple[str, float]]:
    """PSS by part: each named group's processes, then everything else under this process."""
    seen: set[int] = set()
    rows: list[tuple[str, float]] = []
    for label, pids in groups.items():
        tree = {p for pid in pids for p in _descendants(pid)}
        seen |= tree
        rows.append((label, sum(_pss_mb(p) for p in tree)))
    rest: dict[str, float] = {}
    for pid in _descendants(os.getpid()):
        if pid in seen:
            continue
        label = "driver (this script)" if pid == os.getpid() else ray_label(pid)
        rest[label] = rest.get(label, 0.0) + _pss_mb(pid)
    rows += sorted(rest.items(), key=lambda kv: -kv[1])
    return rows


# --- CPU ----------------------------------------------------------------------------------------

_TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> dict[int, tuple[str, int]]:
    """Every process under this one: its label and the CPU ticks it has used (user + system)."""
    found = {}
    for pid in _descendants(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[pid] = (ray_label(pid), int(fields[11]) + int(fields[12]))
    return found


def cpu_per_request(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], requests: float
) -> dict[str, float]:
    """CPU microseconds per request by label, busiest first (wrk's own is not counted: it is
    not a child yet when sampled, and gone after)."""
    used: dict[str, float] = {}
    for pid, (label, ticks) in after.items():
        spent = ticks - before.get(pid, (label, 0))[1]
        if spent > 0 and pid != os.getpid():
            used[label] = used.get(label, 0.0) + spent * _TICK_US / max(requests, 1.0)
    return dict(sorted(used.items(), key=lambda kv: -kv[1]))


def cpu_text(cpu: dict[str, float], top: int = 3) -> str:
    parts = [f"{label} {us:.0f}" for label, us in list(cpu.items())[:top] if us >= 10]
    return f"  CPU us/req: {sum(cpu.values()):.0f} ({', '.join(parts)})" if cpu else ""


# --- Ray's switches -----------------------------------------------------------------------------


def serve_flags() -> dict[str, str] | None:
    """The ``RAY_SERVE_*`` switches the raylet under this process started with (every Ray
    process inherits them; ``start_serving`` sets them only around ``ray.init``), without the
    ports and paths that go with them. None when there is no raylet to ask."""
    skip = ("PORT", "PATH", "FILE", "LOC", "BASE")
    for pid in _descendants(os.getpid()):
        if "raylet/raylet" not in cmdline(pid):
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        except OSError:
            return None
        pairs = (item.partition("=") for item in environ.split("\0") if item)
        return {
            k: v
            for k, _, v in sorted(pairs)
            if k.startswith("RAY_SERVE_") and not any(word in k for word in skip)
        }
    return None

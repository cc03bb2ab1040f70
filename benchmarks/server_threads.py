"""How many threads each server process was given for torch (and any OpenMP or MKL library),
read from the process itself, so a throughput comparison can show both servers had the same."""

from __future__ import annotations

from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def threads_text(servers: dict[str, int]) -> str:
    """A line per server process (label -> pid): its ``THREAD_VARIABLES``."""
    lines = ["torch threads, by server process:"]
    for label, pid in servers.items():
        environ = environ_of(pid)
        given = ", ".join(f"{v}={environ.get(v, 'unset')}" for v in THREAD_VARIABLES)
        lines.append(f"  {label}: {given}")
    return "\n".join(lines)

"""Ports a stack picks never meet another's (sigserve/ports.py): CI saw HAProxy refuse a serving
port that Ray had taken, and `ray start` refuse a port inside its own worker range, when both
were drawn from the kernel's ephemeral range."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from sigserve.ports import WINDOW, free_port

_RESERVE_ALL = """
from sigserve.ports import port_window
got = []
while True:
    try:
        got.append(port_window())
    except RuntimeError:
        break
print(" ".join(map(str, got)))
"""

_RESERVE_ONE_AND_WAIT = """
import sys
from sigserve.ports import port_window
print(port_window(), flush=True)
sys.stdin.read()
"""


def _python(code: str, tmp: Path, **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                            stdout=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def _all_windows(tmp: Path) -> list[int]:
    out, _ = _python(_RESERVE_ALL, tmp).communicate(timeout=60)
    return [int(p) for p in out.split()]


def test_single_ports_are_free_distinct_and_outside_the_kernels_ephemeral_range() -> None:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if low <= p <= high]
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free when handed out


def test_a_window_held_by_a_live_process_is_never_handed_to_another(tmp_path: Path) -> None:
    holder = _python(_RESERVE_ONE_AND_WAIT, tmp_path, stdin=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        held = int(holder.stdout.readline())
        others = _all_windows(tmp_path)
        assert held not in others
        assert len(others) == len(set(others)) >= 10_000 // WINDOW - 5
    finally:
        holder.kill()
        holder.wait()
    # Its owner gone, the window is anyone's again.
    assert held in _all_windows(tmp_path)

"""Driving ``wrk`` and reading its figures, for the benchmarks that measure throughput."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Endpoint:
    url: str
    body: str
    script: Path = field(default=Path())


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> tuple[float, float, float, int, int]:
    """(req/s, p50 ms, p99 ms, non-2xx/3xx answers, socket errors) from ``wrk --latency``."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk's output:\n{output}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return (
        float(rps.group(1)),
        _ms(p50.group(1)) if p50 else float("nan"),
        _ms(p99.group(1)) if p99 else float("nan"),
        int(non2xx.group(1)) if non2xx else 0,
        sum(int(g) for g in errors.groups()) if errors else 0,
    )


def write_wrk_script(directory: Path, label: str, body: str) -> Path:
    path = directory / f"{label}.lua"
    # A Lua long string with a level that cannot occur in a JSON body of ours.
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{body}]==]\n"
    )
    return path


def run_wrk(endpoint: Endpoint, threads: int, connections: int, seconds: float) -> str:
    argv = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
        "--latency", "-s", str(endpoint.script), endpoint.url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout

"""Rounds of ``wrk`` over several paths, for the benchmarks that compare them side by side
(``tensor_throughput.py``, ``ray_floor.py``): every path answers before the first round, each
is warmed at each number of connections, then every round drives each path once, back to back,
each round starting at the next path, with the CPU every process spent per request."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import httpx
from process_stats import cpu_per_request, cpu_text, cpu_ticks
from serving_targets import wait_until
from wrk import Endpoint, parse_wrk, run_wrk, write_wrk_script

T = TypeVar("T")


def rotated(items: list[T], by: int) -> list[T]:
    """``items`` starting at ``by`` (mod their number): each round starts the paths at another
    one, so a periodic burst of Ray's background processes (its DashboardAgent's, ~0.6 s of
    CPU every ~25-30 s here) does not fall on the same path's window round after round."""
    return items[by % len(items) :] + items[: by % len(items)]


def ready_endpoints(
    targets: dict[str, tuple[str, object]], scripts: Path, timeout_s: float
) -> dict[str, Endpoint]:
    """label -> an ``Endpoint`` for ``(url, JSON body)``, its wrk script in ``scripts``, once
    the path has answered the body with a 200 (within ``timeout_s``)."""
    scripts.mkdir(parents=True, exist_ok=True)
    endpoints: dict[str, Endpoint] = {}
    with httpx.Client(timeout=60) as client:
        for i, (label, (url, body)) in enumerate(targets.items()):
            text = json.dumps(body)
            endpoint = Endpoint(url, text, write_wrk_script(scripts, f"e{i}", text))
            endpoints[label] = endpoint
            wait_until(label, partial(_answers, client, endpoint), timeout_s)
    return endpoints


def _answers(client: httpx.Client, endpoint: Endpoint) -> bool:
    headers = {"content-type": "application/json"}
    return client.post(endpoint.url, content=endpoint.body, headers=headers).status_code == 200


@dataclass
class Figures:
    """Per (label, connections), one figure per round, in round order."""

    rps: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    p50: dict[tuple[str, int], list[float]] = field(default_factory=dict)

    def ratio(self, label: str, peer: str, connections: int) -> float | None:
        """The median of the per-round ratios of ``label``'s req/s to ``peer``'s."""
        runs, base = self.rps.get((label, connections)), self.rps.get((peer, connections))
        if not runs or not base:
            return None
        return statistics.median(r / b for r, b in zip(runs, base, strict=True))


def drive_rounds(
    endpoints: dict[str, Endpoint],
    rounds: int,
    seconds: float,
    connection_counts: tuple[int, ...] = (1, 16),
) -> Figures:
    """wrk over every path, ``rounds`` times at each number of connections (one thread for one
    connection, two otherwise); prints each run as it ends."""
    figures = Figures()
    for connections in connection_counts:
        threads = 1 if connections == 1 else 2
        for endpoint in endpoints.values():  # warm each path
            run_wrk(endpoint, threads, connections, 1)
        for round_ in range(rounds):
            for label, endpoint in rotated(list(endpoints.items()), round_):
                before = cpu_ticks()
                rate, median, _, bad, errors = parse_wrk(
                    run_wrk(endpoint, threads, connections, seconds)
                )
                cpu = cpu_per_request(before, cpu_ticks(), rate * seconds)
                if bad or errors:
                    print(f"! {label} c{connections}: {bad} non-2xx, {errors} socket errors")
                print(
                    f"  round {round_ + 1} {label} c={connections}: {rate:.0f} req/s"
                    + cpu_text(cpu, top=5),
                    flush=True,
                )
                figures.rps.setdefault((label, connections), []).append(rate)
                figures.p50.setdefault((label, connections), []).append(median)
    return figures

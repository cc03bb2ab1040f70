"""Minutes of inference load while versions land and pins move (``SIGSERVE_LOAD_SECONDS``, 300).

Clients keep asking for the default, for live versions by path and for quarantined ones, while a
driver registers new versions (compatible and breaking, known in advance) and pins the default
back and forth between live versions. Only the answers the design calls for may come back: 200,
404 (not yet known), 409 (quarantined), 503 (pending, loading); a quarantined version never
answers 200; every 200 comes from the version that was asked for (its tag in the answer).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections import Counter

import httpx

from tests.integration.conftest import ControllerHandle, register_echo, serve_status, wait_for

SECONDS = float(os.environ.get("SIGSERVE_LOAD_SECONDS", "300"))
CLIENTS = int(os.environ.get("SIGSERVE_LOAD_CLIENTS", "8"))
ALLOWED = {200, 404, 409, 503}


def test_load_while_versions_land_and_pins_move(serving_url: str, ctl: ControllerHandle) -> None:
    name = "loaded_echo"
    kinds: dict[str, str] = {}  # version -> "live" | "breaking", as registered

    def land(breaking: bool) -> str:
        tag = f"t{len(kinds) + 1}"
        version = register_echo(name, tag=tag, input_label="text" if breaking else "prompt")
        kinds[version] = "breaking" if breaking else "live"
        return version

    land(False)
    wait_for(lambda: serve_status(serving_url, name).status_code == 200, 60)

    statuses: Counter[int] = Counter()
    violations: list[str] = []
    latencies: list[float] = []
    stop = asyncio.Event()

    async def client(http: httpx.AsyncClient, seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            version = rng.choice([None, *kinds])
            path = f"/models/{name}" + (f"/versions/{version}/serve" if version else "/serve")
            body = {"text": "x"} if version and kinds[version] == "breaking" else {"prompt": "x"}
            started = time.monotonic()
            try:
                r = await http.post(path, json=body)
            except httpx.HTTPError as exc:
                violations.append(f"{path}: {type(exc).__name__}")
                continue
            latencies.append(time.monotonic() - started)
            statuses[r.status_code] += 1
            if r.status_code not in ALLOWED:
                violations.append(f"{path}: {r.status_code} {r.text[:200]}")
            elif r.status_code == 200:
                # Tags are t<version>: the answer says which version ran.
                ran = r.json()[0]["answer"].split(":")[0].removeprefix("t")
                if kinds.get(ran) != "live":
                    violations.append(f"{path}: version {ran} ({kinds.get(ran)}) answered 200")
                elif version is not None and ran != version:
                    violations.append(f"{path}: version {ran} answered for version {version}")

    async def driver() -> tuple[int, int]:
        landed, pins = 0, 0
        deadline = time.monotonic() + SECONDS
        rng = random.Random(0)
        async with httpx.AsyncClient(base_url=ctl.url, headers=ctl.admin, timeout=30) as admin:
            while time.monotonic() < deadline:
                await asyncio.to_thread(land, rng.random() < 0.4)
                landed += 1
                live = [v for v, k in kinds.items() if k == "live"]
                target = rng.choice(live)
                r = await admin.put(f"/admin/models/{name}/default", json={"version": target})
                # A version not decided yet is not pinned (409/422 name why): that is an answer.
                pins += r.status_code == 200
                if r.status_code >= 500:
                    violations.append(f"pin {target}: {r.status_code} {r.text[:200]}")
                await asyncio.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        stop.set()
        return landed, pins

    async def run() -> tuple[int, int]:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=serving_url, timeout=60, limits=limits) as http:
            tasks = [asyncio.create_task(client(http, n)) for n in range(CLIENTS)]
            landed, pins = await driver()
            await asyncio.gather(*tasks)
        return landed, pins

    started = time.monotonic()
    landed, pins = asyncio.run(run())
    took = time.monotonic() - started
    total = sum(statuses.values())
    q = statistics.quantiles(latencies, n=100)
    print(
        f"\nload: {took:.0f}s, {CLIENTS} clients, {total} requests ({total / took:.0f}/s), "
        f"{landed} versions landed, {pins} pins moved; answers {dict(sorted(statuses.items()))}; "
        f"p50 {1000 * statistics.median(latencies):.1f} ms, p99 {1000 * q[98]:.1f} ms; "
        f"violations {len(violations)}"
    )
    assert violations == [], violations[:10]
    assert statuses[200] > 0

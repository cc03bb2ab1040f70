"""Minutes of inference load while versions land and pins move (``SIGSERVE_LOAD_SECONDS``, 300).

Clients keep asking for the default, for live versions by path and for quarantined ones, while a
driver registers new versions (compatible and breaking, known in advance), pins the default
back and forth between live versions and, right after a pin, while the replica loads the new
default (each version takes ``SIGSERVE_LOAD_MODEL_LOAD_S``, 1 s, to load), quarantines a live
version by the admin API (the old default when it can). Only the answers the design calls for
may come back: 200, 404 (not yet known), 409 (quarantined), 503 (pending, loading); a version
the gate quarantined never answers 200; a version quarantined by hand answers no 200 to a
request sent more than ``SIGSERVE_LOAD_QUARANTINE_BOUND_S`` (0.5 s) after the admin API
acknowledged the quarantine as published (the long-poll's push takes milliseconds: the bound is
for a loaded machine, not for a load to end); every 200 comes from the version that was asked
for (its tag in the answer).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections import Counter
from pathlib import Path

import httpx

# grpc_port: the session's serving_url needs it (gRPC on the stack since 40b2457) and
# tests/load/conftest.py does not import it; found by name here, for this module's tests.
from tests.integration.conftest import (
    ControllerHandle,
    grpc_port,  # noqa: F401
    serve_status,
    wait_for,
)

SLOW_ECHO = Path(__file__).parent / "models" / "slow_echo.py"
SECONDS = float(os.environ.get("SIGSERVE_LOAD_SECONDS", "300"))
CLIENTS = int(os.environ.get("SIGSERVE_LOAD_CLIENTS", "8"))
ALLOWED = {200, 404, 409, 503}
# From the admin API's answer to a quarantine (published) to the last request that may still get
# a 200 from that version: the long-poll's push and the replica taking the table.
QUARANTINE_BOUND_S = float(os.environ.get("SIGSERVE_LOAD_QUARANTINE_BOUND_S", "0.5"))
# How long each version takes to load: real models take seconds (their weights), and a replica
# warming a new default that fast hid a quarantine that waited for the warm-up.
MODEL_LOAD_S = float(os.environ.get("SIGSERVE_LOAD_MODEL_LOAD_S", "1.0"))


def register_slow_echo(name: str, *, tag: str, input_label: str) -> str:
    """Log and register a version that answers "<tag>:<input>"; its number."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    example_in = pd.DataFrame({input_label: ["x"]})
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SLOW_ECHO),
            signature=infer_signature(example_in, pd.DataFrame({"answer": ["x"]})),
            model_config={"tag": tag, "input_label": input_label, "load_s": MODEL_LOAD_S},
            pip_requirements=[],
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def test_load_while_versions_land_and_pins_move(serving_url: str, ctl: ControllerHandle) -> None:
    name = "loaded_echo"
    kinds: dict[str, str] = {}  # version -> "live" | "breaking", as registered
    # Versions quarantined by hand -> when the admin API acknowledged it (time.monotonic()).
    quarantined: dict[str, float] = {}
    # The latest send time of a 200 from a hand-quarantined version, after its acknowledgement.
    late_200s: dict[str, float] = {}

    def land(breaking: bool) -> str:
        tag = f"t{len(kinds) + 1}"
        version = register_slow_echo(name, tag=tag, input_label="text" if breaking else "prompt")
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
                acknowledged = quarantined.get(ran)
                if kinds.get(ran) != "live":
                    violations.append(f"{path}: version {ran} ({kinds.get(ran)}) answered 200")
                elif version is not None and ran != version:
                    violations.append(f"{path}: version {ran} answered for version {version}")
                elif acknowledged is not None and started > acknowledged:
                    late = started - acknowledged
                    late_200s[ran] = max(late_200s.get(ran, 0.0), late)
                    if late > QUARANTINE_BOUND_S:
                        violations.append(
                            f"{path}: version {ran} answered 200 to a request sent {late:.3f}s "
                            "after its quarantine was published"
                        )

    async def quarantine(admin: httpx.AsyncClient, version: str) -> None:
        r = await admin.post(
            f"/admin/models/{name}/versions/{version}/quarantine",
            json={"reason": "load test: quarantined by hand under traffic"},
        )
        if r.status_code != 200 or not r.json().get("published"):
            violations.append(f"quarantine {version}: {r.status_code} {r.text[:200]}")
            return
        quarantined[version] = time.monotonic()

    async def driver() -> tuple[int, int]:
        landed, pins = 0, 0
        deadline = time.monotonic() + SECONDS
        rng = random.Random(0)
        default = "1"
        async with httpx.AsyncClient(base_url=ctl.url, headers=ctl.admin, timeout=30) as admin:
            while time.monotonic() < deadline:
                newest = await asyncio.to_thread(land, rng.random() < 0.4)
                landed += 1
                live = [v for v, k in kinds.items() if k == "live" and v not in quarantined]
                target = rng.choice(live)
                r = await admin.put(f"/admin/models/{name}/default", json={"version": target})
                # A version not decided yet is not pinned (409/422 name why): that is an answer.
                pins += r.status_code == 200
                if r.status_code >= 500:
                    violations.append(f"pin {target}: {r.status_code} {r.text[:200]}")
                # At once, while the replica loads the new default: the old default, which it
                # would keep answering with meanwhile, else another live version the controller
                # knows (not the one just registered). Two stay live.
                moved = r.status_code == 200 and target != default
                others = [v for v in live if v not in (target, newest)]
                if len(live) >= 3 and (moved or others):
                    await quarantine(admin, default if moved else rng.choice(others))
                if r.status_code == 200:
                    default = target
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
        f"{landed} versions landed, {pins} pins moved, {len(quarantined)} quarantined by hand "
        f"(latest 200 after one: {1000 * max(late_200s.values(), default=0.0):.0f} ms, "
        f"bound {1000 * QUARANTINE_BOUND_S:.0f} ms); "
        f"answers {dict(sorted(statuses.items()))}; "
        f"p50 {1000 * statistics.median(latencies):.1f} ms, p99 {1000 * q[98]:.1f} ms; "
        f"violations {len(violations)}"
    )
    assert violations == [], violations[:10]
    assert statuses[200] > 0
    assert quarantined, "no version was quarantined under traffic: the run was too short"

"""How long a controller on a fresh database takes to prime a registry of many versions.

    .venv/bin/python benchmarks/priming.py [--models 100] [--versions 20] [--threads 8]

Starts MLflow alone (``bench_stack``, serving off), logs one small model from code
(``benchmarks/models/upper.py``) and registers it ``--models`` x ``--versions`` times from
``--threads`` threads. Then starts the controller on a fresh database (a new epoch) and times,
from its start, the first table its long-poll answers: that table waits until every listed
model was reconciled once (``controller/priming.py``), so this is how long replicas keep their
old table after the controller's database is replaced. Prints that time, the versions in the
table by state, the controller's own ``primed`` line, and the time per version.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
from bench_stack import log_upper_model, running_stack

from sigserve.stack import Secrets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with running_stack("prime-", serving=False, resync_interval_s=3600) as stack:
        from mlflow import MlflowClient

        info = log_upper_model(stack.tracking_uri)
        client = MlflowClient(stack.tracking_uri)
        names = [f"prime_{m:03d}" for m in range(args.models)]
        started = time.monotonic()
        for name in names:
            client.create_registered_model(name)

        def register(name: str) -> None:
            for _ in range(args.versions):
                client.create_model_version(name, info.model_uri, model_id=info.model_id)

        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(register, names))
        total = args.models * args.versions
        print(
            f"registered {total} versions over {args.models} models in "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )

        # Not wait_healthy: full readiness needs a published table, which priming holds back.
        began = time.monotonic()
        stack.controller.start()
        # Polled as a replica polls it, with the serving token (the long-poll needs it).
        serving = {"Authorization": f"Bearer {Secrets.load_or_create(stack.home).serving_token}"}
        with httpx.Client(base_url=stack.controller_url, timeout=70, headers=serving) as http:
            while True:
                try:
                    r = http.get("/routing-table", params={"after": -1, "timeout": 30})
                except httpx.TransportError:
                    time.sleep(0.2)  # not listening yet
                    continue
                if r.status_code == 200:
                    break
                if r.status_code == 401:
                    raise SystemExit(
                        "the controller refused the serving token: bench_stack must give it "
                        "the stack's SIGSERVE_SERVING_TOKEN"
                    )
        first_table = time.monotonic() - began
        table = r.json()
        states = Counter(
            v["state"] for m in table["models"].values() for v in m["versions"].values()
        )
        log = stack.controller.log_path.read_text(errors="replace")
        primed = re.findall(r"primed: the \d+ listed models reconciled in [\d.]+ s", log)
        print(
            f"first table (revision "
            f"{table['revision']}) after {first_table:.1f} s: {len(table['models'])} models, "
            f"{sum(states.values())} versions {dict(states)}"
        )
        print(f"controller's log: {primed[-1] if primed else 'no primed line'}")
        print(f"{first_table / total * 1000:.0f} ms per version, start to first table")


if __name__ == "__main__":
    main()

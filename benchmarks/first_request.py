"""The first request to a new default, against a cold load on the request path. Run on purpose.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/first_request.py [--runs 3]

Starts its own stack on free ports (as ``registration_latency.py`` does) and registers MiniLM
(``sigserve.demo``'s embedding model: loading it takes seconds here). Then, ``--runs`` times:

- *cold*: registers a version, and times the first request to it by path
  (``/models/{name}/versions/{v}/serve``): a version that is not the default loads on demand,
  so this request waits for the load;
- *default*: registers another version, pins it (``PUT /admin/models/{name}/default``), waits
  until the serving app's ``GET /models/{name}`` names it the default, and times the first
  request to ``/models/{name}/serve``: a new default is loaded before the table that makes it
  the default is answered from, so this request should not wait for any load.

Prints each figure and their medians, with the time from the pin to the table that serves it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime

import httpx
from bench_stack import running_stack

BODY = {"text": "a cat sits on the mat"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with running_stack("bench-first-") as stack:
        serving, admin = stack.serving_url, stack.admin
        from sigserve.demo.register import log_embedding_version, minilm_model_dir

        name = "bench_minilm"
        weights = minilm_model_dir()
        client = httpx.Client(timeout=120)

        def register() -> str:
            version = log_embedding_version(name, model_dir=weights)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                r = client.get(f"{serving}/models/{name}")
                if r.status_code == 200 and any(
                    v["version"] == version and v["state"] == "live" for v in r.json()["versions"]
                ):
                    return version
                time.sleep(0.05)
            raise TimeoutError(f"version {version} never became live")

        def timed(url: str) -> float:
            started = time.perf_counter()
            r = client.post(url, json=BODY)
            took = time.perf_counter() - started
            r.raise_for_status()
            return took

        register()  # version 1: the first default
        cold, default, pin_to_table = [], [], []
        for _ in range(args.runs):
            version = register()
            cold.append(timed(f"{serving}/models/{name}/versions/{version}/serve"))
            version = register()
            pinned_at = time.perf_counter()
            r = client.put(
                f"{stack.controller_url}/admin/models/{name}/default",
                json={"version": version},
                headers=admin,
            )
            r.raise_for_status()
            while client.get(f"{serving}/models/{name}").json()["default_version"] != version:
                time.sleep(0.005)
            pin_to_table.append(time.perf_counter() - pinned_at)
            default.append(timed(f"{serving}/models/{name}/serve"))
            print(
                f"cold first request {1000 * cold[-1]:7.0f} ms | pin -> served as default "
                f"{1000 * pin_to_table[-1]:7.0f} ms | first request to the new default "
                f"{1000 * default[-1]:5.0f} ms"
            )

        def med(xs: list[float]) -> str:
            return f"{1000 * statistics.median(xs):.0f} ms"

        print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, MiniLM, {args.runs} runs, medians:")
        print(f"  first request to a version loaded on demand:   {med(cold)}")
        print(f"  pin -> the serving app answers it as default:  {med(pin_to_table)}")
        print(f"  first request to the new default:              {med(default)}")


if __name__ == "__main__":
    main()

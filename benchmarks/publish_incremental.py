"""What a publish costs at registry scale: a full rebuild against the incremental publish.

    .venv/bin/python benchmarks/publish_incremental.py [--models 2000] [--versions 5]
        [--repeat N]

Stores ``--models`` models of ``--versions`` live versions each in a fresh SQLite database (the
store's own ``update_model``), then times ``Store.publish(full=True)`` (every decision read and
the table built, as every publish did before ``controller/store_tables.py``), the first
incremental publish of a process (a full build that fills the cache), one with nothing changed
and one after one model was decided again, and a full one with a decision committed 0.2 s into it
(how long that commit waited). Prints seconds per publish.

Each line also prints the process's RSS after it and its peak (``ru_maxrss``). ``--repeat N``:
then N publishes more, each after another model was decided again: whether a publish keeps
memory at each turn or only raises a high-water mark once, apart from the rest of the
controller.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime

from controller.database import make_engine, migrate
from controller.records import ModelRecord, VersionRecord
from controller.store import Store
from wire.routing_table import VersionState

SIG = {"inputs": json.dumps([{"type": "string", "name": "prompt", "required": True}]),
       "outputs": None, "params": None}


def record(i: int, versions: int, state: VersionState = VersionState.LIVE) -> ModelRecord:
    return ModelRecord(
        name=f"m{i:05d}", policy="backward", default_version="1", contract=SIG,
        versions={
            str(v): VersionRecord(
                version=str(v), state=state, reasons=["ok"], signature=SIG, signature_read=True,
                artifact_uri=f"models:/m-{i}-{v}/artifacts", mlmodel_digest="0" * 64,
                decided_at=datetime(2026, 1, 1, tzinfo=UTC),
            )
            for v in range(1, versions + 1)
        },
    )


# The table last published, held until the next is made, as the controller's broadcaster holds
# it: a publish that makes every entry anew has both tables alive at once.
HELD: list[object] = []


def timed(what: str, publish: object) -> float:
    started = time.perf_counter()
    HELD[:] = [publish()]  # type: ignore[operator]
    took = time.perf_counter() - started
    print(f"{what}: {took:.3f} s; RSS {rss_mib():.1f} MiB, peak {peak_mib():.1f} MiB", flush=True)
    return took


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=2000)
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=0)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="sigserve-publish-bench-")
    try:
        engine = make_engine(f"sqlite:///{home}/c.db")
        migrate(engine)
        store = Store(engine)
        for i in range(args.models):
            store.update_model(f"m{i:05d}", lambda _, i=i: record(i, args.versions))
        print(f"{args.models} models x {args.versions} versions; RSS {rss_mib():.1f} MiB; "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        timed("full", lambda: store.publish(full=True))
        fresh = Store(engine)
        timed("first incremental (fills the cache)", fresh.publish)
        timed("incremental, nothing changed", fresh.publish)
        fresh.update_model("m00007", lambda _: record(7, args.versions, VersionState.QUARANTINED))
        timed("incremental, one model decided again", fresh.publish)
        timed("full, again", lambda: fresh.publish(full=True))
        # A decision committed while a full build runs (every 600 s): how long its commit waits.
        waited: list[float] = []

        def decide() -> None:
            time.sleep(0.2)
            started = time.perf_counter()
            quarantined = record(8, args.versions, VersionState.QUARANTINED)
            fresh.update_model("m00008", lambda _: quarantined)
            waited.append(time.perf_counter() - started)

        beside = threading.Thread(target=decide)
        beside.start()
        timed("full, a decision committed 0.2 s into it", lambda: fresh.publish(full=True))
        beside.join()
        print(f"  that decision's commit took {waited[0]:.3f} s", flush=True)
        took = []
        for n in range(args.repeat):
            i = 100 + n
            state = VersionState.QUARANTINED if n % 2 else VersionState.LIVE
            fresh.update_model(f"m{i:05d}", lambda _, i=i, s=state: record(i, args.versions, s))
            took.append(timed(f"  {n + 1}. one model decided again", fresh.publish))
        if took:
            print(f"incremental, one model decided again, {len(took)} times: median "
                  f"{statistics.median(took):.3f} s, max {max(took):.3f} s")
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

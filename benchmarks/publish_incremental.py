"""What a publish costs at registry scale: a full rebuild against the incremental publish.

    .venv/bin/python benchmarks/publish_incremental.py [--models 2000] [--versions 5]

Stores ``--models`` models of ``--versions`` live versions each in a fresh SQLite database (the
store's own ``update_model``), then times ``Store.publish(full=True)`` (every decision read and
the table built, as every publish did before ``controller/store_tables.py``), the first
incremental publish of a process (a full build that fills the cache), one with nothing changed
and one after one model was decided again. Prints seconds per publish.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
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


def timed(what: str, publish: object) -> None:
    started = time.perf_counter()
    publish()  # type: ignore[operator]
    print(f"{what}: {time.perf_counter() - started:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=2000)
    parser.add_argument("--versions", type=int, default=5)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="sigserve-publish-bench-")
    try:
        engine = make_engine(f"sqlite:///{home}/c.db")
        migrate(engine)
        store = Store(engine)
        for i in range(args.models):
            store.update_model(f"m{i:05d}", lambda _, i=i: record(i, args.versions))
        print(f"{args.models} models x {args.versions} versions")
        timed("full", lambda: store.publish(full=True))
        fresh = Store(engine)
        timed("first incremental (fills the cache)", fresh.publish)
        timed("incremental, nothing changed", fresh.publish)
        fresh.update_model("m00007", lambda _: record(7, args.versions, VersionState.QUARANTINED))
        timed("incremental, one model decided again", fresh.publish)
        timed("full, again", lambda: fresh.publish(full=True))
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

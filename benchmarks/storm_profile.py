"""Where the storm's wall time goes: a summary of py-spy's raw profiles of the controller and
the MLflow server (taken by ``make storm`` with ``SIGSERVE_STORM_PROFILE=<dir>``).

    SIGSERVE_STORM_PROFILE=/tmp/prof SIGSERVE_PYSPY=/path/to/py-spy make storm
    .venv/bin/python benchmarks/storm_profile.py /tmp/prof [--rate 50]

py-spy records with ``--idle --threads``: every thread's every sample counts, waiting
included, so a thread's samples / the rate is its wall time. Each stack is put in the first
category whose marker (a function or file in the stack) it holds; the markers are ordered from
the most specific. Printed per process: each category's seconds and its share of the busy
samples, and per thread kind (the event loop, the pool threads ``asyncio.to_thread`` runs the
reconciles in, MLflow's own threads) how much of the time it was busy.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

# (category, markers): a stack holding any marker is in the category. Ordered: first match wins.
CONTROLLER = [
    ("MLflow writes: verdict tags and alias",
     ["write_back (", "Registry.set_version_tag", "Registry.set_alias", "set_model_tag"]),
    ("MLflow reads: a version's MLmodel alone (its location read before)", ["cached_facts ("]),
    ("MLflow reads: artifact files (URI, listing, MLmodel, env files, manifest)",
     ["Registry.artifact"]),
    ("MLflow reads: search_model_versions", ["Registry.versions", "Registry._search"]),
    ("MLflow reads: get_registered_model", ["Registry.model ("]),
    ("MLflow reads: listing (resync)", ["Registry.model_names", "Registry.listing"]),
    ("publish: build the table, write the revision", ["Store.publish", "Publisher.publish"]),
    ("database: the decision's transaction (and deciding)", ["update_model"]),
    ("database: load the model before the pass", ["load_model"]),
    ("database: record a webhook delivery", ["record_delivery"]),
    ("database: resync's pruning and names", ["prune_", "Store.model_names"]),
    ("webhook request (signature, parsing)", ["webhooks.py"]),
    ("admin API (the test's polling)", ["admin.py"]),
    ("long-poll (serving's table)", ["long_poll.py", "broadcaster.py"]),
    ("metrics", ["health.py"]),
    ("proof reports from serving", ["proof_reports.py", "load_failures.py"]),
]
MLFLOW = [
    ("webhook deliveries (POST to the controller)", ["mlflow/webhooks/delivery.py"]),
    ("create_model_version", ["_create_model_version ("]),
    ("create_registered_model", ["_create_registered_model ("]),
    ("set tag / alias (the controller's writes)", ["_set_model_version_tag (",
                                                   "_set_registered_model_alias ("]),
    ("get_registered_model", ["_get_registered_model ("]),
    ("search_model_versions", ["_search_model_versions (", "search_model_versions_impl ("]),
    ("search_registered_models", ["_search_registered_models ("]),
    ("download URI", ["_get_model_version_download_uri ("]),
    ("artifacts: list and download", ["_list_artifacts", "_download_artifact", "artifacts"]),
    ("logged models, runs, experiments", ["logged_model", "_get_run", "_get_experiment"]),
    ("a request, handler not in the sampled stack", ["mlflow/server/handlers.py",
                                                     "WSGIResponder", "httptools_impl.py"]),
]
IDLE = "idle (waiting for work)"
LOOP = "event loop inside uvloop/asyncio C code (mostly waiting)"
# A database call's leaf, for the share of busy time spent inside the database driver.
IN_DATABASE = ("DefaultDialect.do_execute", "DefaultDialect.do_commit",
               "DefaultDialect.do_executemany", "CursorFetchStrategy.fetch")
LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
THREAD = re.compile(r"^thread \(\d+\): (?P<name>.*)$")


def thread_kind(name: str) -> str:
    if name == "MainThread":
        return "event loop (main thread)"
    if name.startswith("sigserve-reconcile"):
        return "the worker's pass threads"
    if name.startswith("sigserve-write-back"):
        return "the write-back lane's threads (controller/write_back_lane.py)"
    if name.startswith(("asyncio_", "uvloop_", "ThreadPoolExecutor")):
        return "pool threads (asyncio.to_thread)"
    if name.startswith("AnyIO"):
        return "AnyIO worker threads (sync request handlers)"
    return "other threads"


def idle(frames: list[str]) -> str | None:
    leaf = frames[-1] if frames else ""
    names = [f.split(" (", 1)[0] for f in frames]
    if leaf.startswith(("_worker (concurrent/futures/thread.py", "Popen._try_wait")):
        return IDLE  # a pool thread waiting for a task; MLflow's launcher waiting for uvicorn
    if "WorkerThread.run" in names:
        after = names[names.index("WorkerThread.run") + 1:]
        if after[:1] == ["Queue.get"]:
            return IDLE  # an AnyIO worker thread waiting for a request
    if leaf.startswith("Runner.run (asyncio/runners.py"):
        return LOOP
    return None


def categorise(frames: list[str], rules: list[tuple[str, list[str]]]) -> str:
    if (waiting := idle(frames)) is not None:
        return waiting
    joined = ";".join(frames)
    for category, markers in rules:
        if any(m in joined for m in markers):
            return category
    return "other (busy)"


def summarise(path: Path, rules: list[tuple[str, list[str]]], rate: float) -> str:
    by_category: Counter[str] = Counter()
    by_thread: dict[str, Counter[str]] = defaultdict(Counter)
    threads: dict[str, set[str]] = defaultdict(set)
    in_database = 0
    for line in path.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if not m:
            continue
        # With --subprocesses, process frames come first; then the thread, then its stack.
        frames = [f for f in m["stack"].split(";") if not f.startswith("process ")]
        t = THREAD.match(frames[0]) if frames else None
        name = t["name"] if t else "?"
        tid = frames[0] if t else "?"
        frames = frames[1:] if t else frames  # a stack py-spy read only in part: no thread
        count = int(m["count"])
        kind = thread_kind(name) if t else "stacks sampled in part (thread unknown)"
        threads[kind].add(tid)
        category = categorise(frames, rules)
        by_category[category] += count
        state = "idle" if category in (IDLE, LOOP) else "busy"
        by_thread[kind][state] += count
        if state == "busy" and frames and frames[-1].startswith(IN_DATABASE):
            in_database += count
    total = sum(by_category.values())
    busy = total - by_category[IDLE] - by_category[LOOP]
    out = [f"{path.name}: {total / rate:.0f} thread-seconds sampled, {busy / rate:.0f} busy "
           f"(not waiting for work); of the busy, {in_database / rate:.0f} s inside the "
           f"database driver (execute, commit, fetch)"]  # fmt: skip
    for kind, split in sorted(by_thread.items()):
        out.append(f"  {kind}: {len(threads[kind])} thread(s), busy {split['busy'] / rate:.1f} s"
                   f", waiting {split['idle'] / rate:.1f} s")  # fmt: skip
    out.append(f"  {by_category[LOOP] / rate:.1f} s: {LOOP}")
    for category, count in by_category.most_common():
        if category in (IDLE, LOOP):
            continue
        out.append(f"    {count / rate:7.1f} s  {100 * count / max(1, busy):4.1f}%  {category}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--rate", type=float, default=50.0, help="py-spy's --rate")
    args = parser.parse_args()
    for name, rules in (("controller", CONTROLLER), ("mlflow", MLFLOW)):
        path = args.directory / f"{name}.txt"
        if path.exists():
            print(summarise(path, rules, args.rate))


if __name__ == "__main__":
    main()

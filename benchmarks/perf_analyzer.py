"""Triton's ``perf_analyzer`` against sigserve's and MLServer's Open Inference Protocol (V2 infer)
on the numeric model. Run on purpose.

    .venv/bin/python benchmarks/perf_analyzer.py [--seconds 4] [--rounds 1] [--no-mlserver]

Starts its own stack (``bench_stack.running_stack``), registers the numeric tensor model
(``v2_throughput.register_numeric``: float32 (-1, 3) in, (-1, 2) out), and Seldon MLServer 1.7.1
on the same version (``mlserver_peer``), then drives each path with ``perf_analyzer`` at
concurrency 1 and 16, one record per request, the paths alternating back to back each round.
Prints throughput and p50/p99 latency (medians over rounds) and each path's throughput ratio to
MLServer's V2 infer (median of the per-round ratios). sigserve's ``/serve`` and
``/invocations`` on the same model are driven too, as the reference the protocols are held to.

Where ``perf_analyzer`` comes from (``ensure_env``): PyPI's ``perf-analyzer`` wheels (2.58 on)
are built for glibc 2.38 and this machine has 2.36 (Debian 12), so pip offers only the empty
0.1.0 placeholder; ``tritonclient`` wheels up to 2.50.0 carry the binary (built for glibc 2.34),
which needs ``libcudart.so.12`` (PyPI's ``nvidia-cuda-runtime-cu12``, put on its library path,
no GPU used) and ``libb64.so.0d`` (Debian's ``libb64-0d``, installed with apt-get when missing
and run as root). All in a venv of its own under ``~/.cache/sigserve-bench-envs``.

How it sends: ``--service-kind triton`` asks for ``/v2/models/{name}/config`` first (Triton's
model-configuration extension, which neither sigserve nor MLServer 1.7.1 serves: it stops at
"failed to get model config"), so each request is the V2 JSON body posted as it is through
``perf_analyzer``'s generic HTTP client (``--service-kind openai --endpoint <path>``, which
sends the ``payload`` of ``--input-data`` unchanged and needs ``--async``): the same request a
tritonclient ``infer`` makes, measured by ``perf_analyzer``'s windows and percentiles.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes.util
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from bench_stack import running_stack
from mlserver_peer import CORE, running_mlserver
from serving_targets import wait_until
from v2_throughput import register_numeric

CACHE = Path.home() / ".cache" / "sigserve-bench-envs"
# The last tritonclient wheel with perf_analyzer inside; the CUDA runtime it links against.
REQUIREMENTS = ("tritonclient==2.50.0", "nvidia-cuda-runtime-cu12==12.9.79")
DEBIAN_LIBB64 = ("libb64.so.0d", "libb64-0d")
V2_BODY = {
    "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]
}
# label -> (path on sigserve, body); MLServer's V2 infer is added beside them.
PATHS: dict[str, tuple[str, object]] = {
    "sigserve /v2 infer": ("/v2/models/numeric/infer", V2_BODY),
    "sigserve /serve": ("/models/numeric/serve", {"inputs": [[1.0, 2.0, 3.0]]}),
    "sigserve /invocations": ("/models/numeric/invocations", {"inputs": [[1.0, 2.0, 3.0]]}),
}
PEER = "mlserver /v2 infer"
SERVE = "sigserve /serve"


@dataclass(frozen=True)
class Analyzer:
    binary: Path
    library_path: str

    def run(
        self, url: str, body: object, concurrency: int, window_ms: int, workdir: Path
    ) -> dict[str, float] | None:
        """(req/s, p50 ms, p99 ms) of one measurement, or None when it found no stable one."""
        parts = urlsplit(url)
        data = workdir / "input.json"
        data.write_text(json.dumps({"data": [{"payload": [body]}]}))
        report = workdir / "report.csv"
        report.unlink(missing_ok=True)
        command = [
            str(self.binary), "-m", "numeric", "-u", parts.netloc, "-i", "http",
            "--service-kind", "openai", "--endpoint", parts.path.lstrip("/"), "--async",
            "--input-data", str(data), "--concurrency-range", str(concurrency),
            "--measurement-interval", str(window_ms), "--stability-percentage", "25",
            "--max-trials", "8", "--percentile", "99", "-f", str(report),
        ]  # fmt: skip
        env = {**os.environ, "LD_LIBRARY_PATH": self.library_path}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not report.is_file():
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            print(f"! c{concurrency} {url}: {' / '.join(tail)}", flush=True)
            return None
        with report.open() as f:
            (row,) = list(csv.DictReader(f))
        return {
            "rps": float(row["Inferences/Second"]),
            "p50": float(row["p50 latency"]) / 1000,
            "p99": float(row["p99 latency"]) / 1000,
        }


def ensure_env() -> Analyzer:
    """perf_analyzer from its venv (built once), with the libraries it loads."""
    _ensure_libb64()
    digest = hashlib.sha256("\n".join(REQUIREMENTS).encode()).hexdigest()[:10]
    env = CACHE / f"perf-analyzer-{digest}"
    if not (env / ".complete").is_file():
        env.parent.mkdir(parents=True, exist_ok=True)
        print(f"building perf_analyzer's venv in {env} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
        pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps"]
        subprocess.run([*pip, *REQUIREMENTS], check=True)
        (env / ".complete").write_text("\n".join(REQUIREMENTS) + "\n")
    (cudart,) = env.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib")
    return Analyzer(env / "bin" / "perf_analyzer", str(cudart))


def _ensure_libb64() -> None:
    library, package = DEBIAN_LIBB64
    if ctypes.util.find_library("b64") or Path("/lib/x86_64-linux-gnu", library).exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"perf_analyzer needs {library}: install Debian's {package}")
    print(f"installing {package} with apt-get (perf_analyzer loads {library})", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=4.0, help="one measurement window")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-mlserver", action="store_true", help="sigserve's paths only")
    args = parser.parse_args()
    analyzer = ensure_env()
    with running_stack("bench-pa-") as stack, contextlib.ExitStack() as peers:
        version = register_numeric("numeric")
        targets = {label: (stack.serving_url + path, body) for label, (path, body) in PATHS.items()}
        if not args.no_mlserver:
            peer = peers.enter_context(
                running_mlserver(
                    "numeric", f"models:/numeric/{version}", stack.home, stack.tracking_uri,
                    requirements=CORE,
                )
            )  # fmt: skip
            targets[PEER] = (peer.infer, V2_BODY)
        client = httpx.Client(timeout=60)
        for label, (url, body) in targets.items():
            wait_until(label, lambda u=url, b=body: client.post(u, json=b).status_code == 200, 120)
        workdir = stack.home / "perf-analyzer"
        workdir.mkdir()
        window_ms = int(args.seconds * 1000)
        figures: dict[tuple[str, int], list[dict[str, float]]] = {}
        for concurrency in (1, 16):
            for _ in range(args.rounds):
                for label, (url, body) in targets.items():
                    found = analyzer.run(url, body, concurrency, window_ms, workdir)
                    if found is not None:
                        figures.setdefault((label, concurrency), []).append(found)
        report(figures)
    sys.stdout.flush()


def report(figures: dict[tuple[str, int], list[dict[str, float]]]) -> None:
    """Medians over rounds; the ratios to MLServer's V2 and to sigserve's ``/serve`` are the
    medians of the per-round ratios, or the ratio of the medians (marked ``*``) when a round of
    one of the two found no stable measurement."""
    print(
        f"{'path':24} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'x MLServer':>11}"
        f" {'x /serve':>9}"
    )
    for (label, concurrency), runs in figures.items():
        cells = [statistics.median(r[key] for r in runs) for key in ("rps", "p50", "p99")]
        ratios = [_ratio(runs, figures.get((base, concurrency))) if base != label else "-"
                  for base in (PEER, SERVE)]  # fmt: skip
        print(
            f"{label:24} {concurrency:>3} {cells[0]:>8.0f} {cells[1]:>8.2f} {cells[2]:>8.2f}"
            f" {ratios[0]:>11} {ratios[1]:>9}"
        )


def _ratio(runs: list[dict[str, float]], base: list[dict[str, float]] | None) -> str:
    if not base:
        return "-"
    if len(base) == len(runs):
        per_round = (r["rps"] / b["rps"] for r, b in zip(runs, base, strict=True))
        return f"{statistics.median(per_round):.2f}"
    medians = statistics.median(r["rps"] for r in runs), statistics.median(b["rps"] for b in base)
    return f"{medians[0] / medians[1]:.2f}*"


if __name__ == "__main__":
    main()

"""The figures printed at the end, also after a failure: build time, time to healthy, the
scenario's timings, where the replicas run, memory per container and image sizes."""

from __future__ import annotations

import re

from compose_docker import image_exists, image_size_mb, project_filter, run
from compose_images import APP_IMAGE, POSTGRES_IMAGE
from compose_output import say
from compose_stack import Stack

TIMINGS = (
    ("pin_to_serving_s", "admin pin -> serving's default"),
    ("prove_s", "sigserve check --prove of v2 (from the host)"),
    ("webhook_to_live_s", "version created -> live in serving"),
    ("webhook_to_200_s", "version created -> its first 200"),
    ("controller_restart_s", "controller restart -> ready"),
    ("after_restart_to_live_s", "after the restart: created -> live"),
)


def memory_table(stack: Stack) -> list[tuple[str, str, str]]:
    """(service, memory used, cpu) of each running container, from ``docker stats``."""
    names = run(
        ["docker", "ps", *project_filter(stack.project), "--format", "{{.Names}}"]
    ).stdout.split()
    if not names:
        return []
    out = run(
        [
            "docker",
            "stats",
            "--no-stream",
            "--format",
            "{{.Name}}\t{{.MemUsage}}\t{{.CPUPerc}}",
            *names,
        ]
    ).stdout
    rows = []
    for line in sorted(out.splitlines()):
        name, mem, cpu = line.split("\t")
        rows.append(
            (
                name.removeprefix(f"{stack.project}_").removeprefix(f"{stack.project}-"),
                mem.split(" / ")[0],
                cpu,
            )
        )
    return rows


def print_figures(stack: Stack, build_s: float | None) -> None:
    f = stack.figures
    say("\n== Figures")
    if build_s is not None:
        say(f"  image build (compose build)          {build_s:7.1f} s")
    if "healthy_s" in f:
        say(f"  compose up -> every service healthy  {f['healthy_s']:7.1f} s")
        say(f"  compose up -> demo models decided    {f['demo_ready_s']:7.1f} s")
    for key, label in TIMINGS:
        if key in f:
            say(f"  {label:<37}{f[key]:7.2f} s")
    if f.get("replicas"):
        say(f"  serving replicas                     {', '.join(f['replicas'])}")
    if f.get("memory"):
        say("  memory per container (docker stats --no-stream):")
        total = 0.0
        for name, mem, cpu in f["memory"]:
            say(f"    {name:<28}{mem:>12}   cpu {cpu}")
            total += _mib(mem)
        say(f"    {'total':<28}{total:>9.0f}MiB")
    for tag in (APP_IMAGE, POSTGRES_IMAGE):
        if image_exists(tag):
            say(f"  image {tag:<32}{image_size_mb(tag):7.0f} MB")


def _mib(text: str) -> float:
    """``docker stats``' "512.3MiB" / "1.2GiB" / "800KiB" in MiB."""
    number = float(re.sub(r"[^0-9.]", "", text) or 0)
    unit = re.sub(r"[0-9. ]", "", text)
    return number * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "B": 1 / 2**20}.get(unit, 1)

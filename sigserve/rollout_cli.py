"""``sigserve rollout``: start, follow, abort and promote a model's rollout (issue 19), on the
controller's admin API (``controller.rollout_admin``).

- ``sigserve rollout MODEL VERSION --canary 5,25,50,100 --step 10m [--shadow 20%]
  [--min-requests N]``: VERSION takes 5% of the requests that name no version, then 25%... each
  step held ``--step`` and at least ``--min-requests``; its gates passed, the last step promotes.
- ``sigserve rollout status|abort|promote MODEL``.

Exit codes as the other admin commands (``sigserve.admin_cli.EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sigserve import admin_render as render
from sigserve.admin_cli import OK, USAGE, _failed
from sigserve.admin_client import (
    AdminClient,
    AdminError,
    AdminToken,
    _seg,
    controller_url,
    find_token,
)

ACTIONS = ("status", "abort", "promote")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` -> seconds."""
    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", text)
    if found is None or float(found.group(1)) <= 0:
        raise argparse.ArgumentTypeError("a duration such as 90s, 10m or 2h")
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def percent(text: str) -> float:
    """``20%`` or ``20`` -> 20.0, from 0 to 100."""
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError("a percentage such as 20%") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError("a percentage from 0 to 100")
    return value


def steps(text: str) -> list[float]:
    """``5,25,50,100`` -> [5.0, 25.0, 50.0, 100.0] (the controller checks their order)."""
    try:
        return [percent(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError("percentages separated by commas: 5,25,50,100") from None


class RolloutClient(AdminClient):
    def start(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"/admin/models/{_seg(name)}/rollouts", body)

    def rollout(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/admin/models/{_seg(name)}/rollout")

    def act(self, name: str, action: str) -> dict[str, Any]:
        return self._call("POST", f"/admin/models/{_seg(name)}/rollout/{action}")


def open_client(url: str, token: AdminToken, timeout_s: float) -> RolloutClient:
    """The client ``run`` uses (a seam: the unit tests hand it a mock transport)."""
    return RolloutClient(url, token, timeout_s=timeout_s)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from sigserve.admin_cli import EXIT_CODES

    p = sub.add_parser(
        "rollout",
        help="roll VERSION out to MODEL's traffic step by step (or: rollout "
        "status|abort|promote MODEL)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("first", metavar="MODEL|status|abort|promote")
    p.add_argument("second", metavar="VERSION|MODEL", nargs="?")
    p.add_argument("--canary", type=steps, default=[5.0, 25.0, 50.0, 100.0], metavar="STEPS",
                   help="the candidate's share at each step, in percent (default "
                   "5,25,50,100); a first 0 is a shadow alone")  # fmt: skip
    p.add_argument(
        "--step",
        type=duration,
        default=600.0,
        metavar="DURATION",
        help="how long each step lasts at least (default 10m)",
    )
    p.add_argument("--shadow", type=percent, default=0.0, metavar="PERCENT",
                   help="the share of the default's requests also sent to the candidate, "
                   "the answers compared (default 0)")  # fmt: skip
    p.add_argument(
        "--min-requests",
        type=int,
        default=100,
        metavar="N",
        help="requests each step must see at least (default 100)",
    )
    p.add_argument(
        "--controller",
        metavar="URL",
        default=None,
        help="the controller's URL (default: $SIGSERVE_CONTROLLER_URL)",
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON as is")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")


def run(args: argparse.Namespace) -> int:
    out, err = Console(), Console(stderr=True)
    action = args.first if args.first in ACTIONS else "start"
    if args.second is None:
        what = "MODEL" if action != "start" else "VERSION"
        err.print(f"sigserve rollout: give {what}", markup=False)
        return USAGE
    model = args.second if action != "start" else args.first
    try:
        token = find_token()
        url = args.controller or controller_url()
        client = open_client(url, token, args.timeout)
        with client:
            if action == "start":
                body = {"candidate": args.second, "steps": args.canary, "step_s": args.step,
                        "shadow": args.shadow, "min_requests": args.min_requests}  # fmt: skip
                answer = client.start(model, body)
            elif action == "status":
                answer = client.rollout(model)
            else:
                answer = client.act(model, action)
    except AdminError as exc:
        args.command = f"rollout {action}"
        return _failed(args, exc, out, err)
    if args.json:
        render.print_json(out, answer)
    else:
        out.print(view(answer))
    return OK


def _share(x: float) -> str:
    return f"{x * 100:g}%"


def view(r: dict[str, Any]) -> Table:
    """A rollout as ``sigserve rollout status`` prints it."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    state = Text(r["state"], style="green" if r["state"] in ("running", "promoted") else "red")
    grid.add_row("rollout", Text(f"{r['model']} v{r['candidate']} (default "
                                 f"v{r['default_version']}) "
                                 ).append(state))  # fmt: skip
    if r.get("reason"):
        grid.add_row("why", Text(r["reason"]))
    marks = [f"[{s:g}%]" if i == r["step"] and r["state"] == "running" else f"{s:g}%"
             for i, s in enumerate(r["steps"])]  # fmt: skip
    grid.add_row("steps", Text(" -> ".join(marks)))
    grid.add_row("weight", Text(f"{_share(r['weight'])} candidate, shadow {_share(r['shadow'])}"))
    if r.get("step_held_s") is not None:
        grid.add_row("step", Text(f"{r['step_held_s']:.0f} s of {r['step_s']:.0f} s, at least "
                                  f"{r['min_requests']} requests"))  # fmt: skip
    window = r.get("window")
    if window:
        c, d, s = window["candidate"], window["default"], window["shadow"]
        grid.add_row("this step", Text(
            f"candidate {c['requests']} requests, {c['errors']} errors, "
            f"{c.get('rejected', 0)} refused; default {d['requests']} requests, "
            f"{d['errors']} errors, {d.get('rejected', 0)} refused; shadow {s['agreed']}/"
            f"{s['compared']} agreed, {s.get('dropped', 0)} dropped "
            f"({r.get('replicas_reporting', 0)} replicas reporting)"
        ))  # fmt: skip
    now = ", ".join(f"{g['gate']} {g['outcome']}" for g in r.get("gates_now") or [])
    if now:
        grid.add_row("gates now", Text(now))
    for past in r.get("history") or []:
        gates = ", ".join(f"{g['gate']} {g['outcome']}" for g in past.get("gates", []))
        grid.add_row(f"step {past['step']}", Text(f"{_share(past['weight'])}: {gates}"))
    for sample in (r.get("disagreements") or [])[-3:]:
        grid.add_row("disagreed", Text(f"{sample['input']} -> default {sample['default']}, "
                                       f"candidate {sample['candidate']}"))  # fmt: skip
    return grid

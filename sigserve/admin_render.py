"""How the admin commands show the controller's answers to a person: ``rich`` tables.

States are coloured (live green, quarantined red, pending yellow) and the reasons are table
cells that wrap to the terminal's width, one paragraph each. ``--json`` skips all of this.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from sigserve.admin_client import (
    Checked,
    Event,
    ModelDetail,
    ModelList,
    Redecided,
    VersionDetail,
)

STATE_STYLES = {"live": "green", "quarantined": "bold red", "pending": "yellow"}


def state(value: str) -> Text:
    return Text(value, style=STATE_STYLES.get(value, ""))


def _when(iso: Any) -> str:
    """An ISO 8601 UTC time as ``YYYY-MM-DD HH:MM:SS``; '-' when there is none."""
    return str(iso)[:19].replace("T", " ") if iso else "-"


def _count(n: int, state_name: str) -> Text:
    return Text(str(n), style=STATE_STYLES[state_name] if n else "dim")


def models_table(body: ModelList) -> Table | Text:
    if not body["models"]:
        return Text("No models yet: register one in MLflow.")
    table = Table(title="Models", title_justify="left")
    table.add_column("Model", no_wrap=True)
    table.add_column("Default")
    table.add_column("Policy")
    for column in ("Live", "Quarantined", "Pending"):
        table.add_column(column, justify="right", no_wrap=True)
    for m in body["models"]:
        table.add_row(
            m["name"], m["default_version"] or "-", f"{m['policy']}, {m['environment_policy']}",
            _count(m["live"], "live"), _count(m["quarantined"], "quarantined"),
            _count(m["pending"], "pending"),
        )  # fmt: skip
    return table


def _override(o: dict[str, Any]) -> Text:
    done = "quarantined" if o.get("action") == "quarantine" else "released"
    by = ", ".join(str(o[k]) for k in ("actor", "at") if o.get(k))
    return Text(f"{done} by hand ({by}): {o.get('reason', '')}", style="magenta")


def _load_failure(f: dict[str, Any]) -> Text:
    return Text(
        f"could not load (replica {f.get('replica', '?')}, {f.get('at', '?')}): "
        f"{f.get('cause', '?')}",
        style="red",
    )


def state_of(v: VersionDetail) -> Text:
    """The state, and under it whether a person decided it and whether serving failed to load.

    Their details (who, when, why, the cause) are among the reasons or warnings already.
    """
    text = state(v["state"])
    if v["override"]:
        text.append("\nby hand", style="magenta")
    if v["load_failure"]:
        text.append("\nload failed", style="red")
    return text


def why(v: VersionDetail) -> Group:
    """A version's reasons and warnings, one paragraph each."""
    lines: list[Text] = [Text(f"• {r}") for r in v["reasons"]]
    lines += [Text(f"warning: {w}", style="yellow") for w in v["warnings"]]
    return Group(*lines)


def model_view(m: ModelDetail) -> Group:
    alias = m["alias"]
    head = Text.assemble(
        (m["name"], "bold"), "   default ", (m["default_version"] or "-", "bold cyan"),
        "   policy ", (m["policy"], "bold"), "   environment ", (m["environment_policy"], "bold"),
        f"   alias {alias['name']} -> {alias['version'] or '-'}",
    )  # fmt: skip
    parts: list[Any] = [head]
    refusal = m["alias_refusal"]
    if refusal:
        reasons = "; ".join(str(r) for r in refusal.get("reasons") or [])
        parts.append(Text(
            f"a move of alias {alias['name']} to version {refusal.get('version')} was refused "
            f"({_when(refusal.get('at'))}): {reasons}", style="red",
        ))  # fmt: skip
    if m["registry_warning"]:
        parts.append(Text(f"registry: {m['registry_warning']}", style="yellow"))
    table = Table(show_lines=True)
    table.add_column("Version", no_wrap=True)
    table.add_column("State", no_wrap=True)
    table.add_column("Decided (UTC)", min_width=10)
    table.add_column("Reasons and warnings", overflow="fold", ratio=1)
    for v in m["versions"]:
        number = Text(v["version"])
        if v["version"] == m["default_version"]:
            number.append("\ndefault", style="bold cyan")
        decided = _when(v["decided_at"]).replace(" ", "\n")
        table.add_row(number, state_of(v), decided, why(v))
    parts.append(table if m["versions"] else Text("No versions."))
    return Group(*parts)


def redecided_view(changes: list[Redecided]) -> Group:
    """What a new contract did to the other versions: each state it changed, and why."""
    if not changes:
        return Group(Text("No version changed state."))
    # A grid, so that a reason that wraps stays right of its bullet.
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(ratio=1)
    for c in changes:
        line = Text(f"version {c['version']}: {c['before']} -> ")
        line.append(c["after"], style=STATE_STYLES.get(c["after"], ""))
        grid.add_row(" ", line)
        for reason in c["reasons"]:
            grid.add_row("   •", Text(reason))
    return Group(Text("Decided again under the new contract:", style="bold"), grid)


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _decision(b: dict[str, Any], a: dict[str, Any]) -> Text:
    text = Text(f"{b.get('state', '-')} -> ")
    text.append(str(a.get("state", "-")), style=STATE_STYLES.get(str(a.get("state")), ""))
    for reason in a.get("reasons") or []:
        text.append(f"\n• {reason}")
    return text


def _change(kind: str, b: dict[str, Any], a: dict[str, Any]) -> Text:
    if kind == "decision":
        return _decision(b, a)
    if kind == "pin":
        moved = f"default {b.get('default_version') or '-'} -> {a.get('default_version') or '-'}"
        contract = b.get("contract") != a.get("contract")
        return Text(moved + (" (the contract changed)" if contract else ""))
    if kind == "policy":
        names = {"policy": "policy", "environment_policy": "environment"}
        changed = [f"{names.get(k, k)} {b.get(k)} -> {a.get(k)}" for k in a if b.get(k) != a.get(k)]
        return Text(", ".join(changed))
    if kind == "override":
        if a:
            return _override(a)
        return Text(f"override removed (was {b.get('action')}: {b.get('reason')})")
    if kind == "load":
        return _load_failure(a) if a else Text("load failure cleared")
    if kind == "alias":
        reasons = "; ".join(str(r) for r in a.get("reasons") or [])
        return Text(f"alias move to {a.get('version')} refused: {reasons}", style="red")
    if kind == "registry":
        warning = a.get("warning")
        return Text(f"registry refused: {warning}" if warning else "registry writes accepted")
    if kind == "rollout":
        return _rollout(a)
    if kind == "model" and not b:
        return Text(f"first stored, versions {', '.join(a.get('versions') or []) or '-'}")
    if kind == "model" and not a:
        return Text("forgotten")
    return Text(f"{_compact(b)} -> {_compact(a)}")


def _rollout(a: dict[str, Any]) -> Text:
    said = f"rollout {a.get('state')} step {a.get('step')}"
    if a.get("weight") is not None:
        said += f" ({float(a['weight']) * 100:g}%)"
    if a.get("reason"):
        said += f": {a['reason']}"
    gates = "; ".join(str(g) for g in a.get("gates") or [])
    return Text(said + (f" [{gates}]" if gates else ""), style="red" if "rolled" in said else "")


def events_table(name: str, events: list[Event]) -> Table:
    table = Table(title=f"Events of {name} (newest first)", title_justify="left")
    table.add_column("ID", justify="right", no_wrap=True)
    table.add_column("At (UTC)")
    table.add_column("Kind", no_wrap=True)
    table.add_column("Version", no_wrap=True)
    table.add_column("Actor", overflow="fold")
    table.add_column("Change", overflow="fold", ratio=1)
    for e in events:
        change = _change(e["kind"], e["before"] or {}, e["after"] or {})
        table.add_row(
            str(e["id"]), _when(e["at"]), e["kind"], e["version"] or "", e["actor"], change
        )
    return table


VERDICT_WORDS = {
    "live": "would go live",
    "quarantined": "would be quarantined",
    "pending": "cannot be decided yet (it would stay pending)",
}


def _columns(schema: Any) -> str:
    """A signature's inputs or outputs in one line: ``a: double, b: string (optional)``."""
    if not schema:
        return "none"
    parts = []
    for c in schema:
        if not isinstance(c, dict):
            continue
        kind = c.get("type")
        if kind == "tensor":
            info = c.get("tensor-spec") or {}
            kind = f"tensor {info.get('dtype', '?')} {info.get('shape', '')}".rstrip()
        optional = "" if c.get("required", True) else " (optional)"
        parts.append(f"{c['name']}: {kind}{optional}" if c.get("name") else f"{kind}{optional}")
    return ", ".join(parts)


def check_view(result: Checked) -> Group:
    """A dry run's verdict as the 409 words it: the reasons, then the warnings, then what the
    artifact was checked against."""
    what = result["source"] or "the local model"
    head = Text(f"{result['model']}: {what} ")
    head.append(VERDICT_WORDS.get(result["verdict"], result["verdict"]),
                style=STATE_STYLES.get(result["verdict"], ""))  # fmt: skip
    head.append(f" (as version {result['would_be_version']})")
    grid = Table.grid(padding=(0, 1))  # a hanging indent: wrapped lines stay right of •
    grid.add_column(no_wrap=True)
    grid.add_column(ratio=1)
    for reason in result["reasons"]:
        grid.add_row("  •", Text(reason))
    for warning in result["warnings"]:
        grid.add_row("  warning:", Text(warning, style="yellow"))
    contract = result["contract"]
    against = Text("Checked against ", style="dim")
    if result["first_version"]:
        against.append("its own signature (the model's first version)", style="dim")
    else:
        against.append(f"the contract of {result['model']}", style="dim")
    against.append(f", policy {result['policy']}, environment {result['environment_policy']}",
                   style="dim")  # fmt: skip
    parts: list[Any] = [head, grid, against]
    if contract is not None:
        parts.append(Text(f"  inputs: {_columns(contract.get('inputs'))}", style="dim"))
        parts.append(Text(f"  outputs: {_columns(contract.get('outputs'))}", style="dim"))
        if contract.get("params"):
            params = ", ".join(f"{p.get('name')}: {p.get('type')}" for p in contract["params"]
                               if isinstance(p, dict))  # fmt: skip
            parts.append(Text(f"  params: {params}", style="dim"))
    parts += [Text(note, style="dim") for note in result["notes"]]
    parts.append(Text("Nothing was registered or written.", style="dim"))
    return Group(*parts)


def print_json(console: Console, body: Any) -> None:
    """The API's JSON as is, one document, no markup, colour or wrapping."""
    console.file.write(json.dumps(body, indent=2) + "\n")

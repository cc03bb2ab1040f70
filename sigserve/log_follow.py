"""The local stack's story in the terminal of ``sigserve up``, human-readable.

The controller and the serving replicas write JSON lines to files (``wire.logs``): the
controller to ``$SIGSERVE_HOME/logs/controller.log``, each replica to its own file in Ray's
session logs. ``StackLog`` follows those files and prints, as one short line each, what a person
watching the stack wants: every webhook, decision, publish and table taken (a registration's
trail) and every warning or error, e.g.

    12:03:04 controller  webhook model_version.created for translation_model v3 (delivery 5f0c…)
    12:03:04 controller  translation_model v3: quarantined (input 'prompt': ...)
    12:03:04 controller  published revision 9: translation_model/3=quarantined
    12:03:04 serving 4jnn took revision 9 (2 models): translation_model/3=quarantined

Lines already in the files when the stack started are not shown again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sigserve.stack import ray_temp_dir

# The events of a registration's trail (``wire.logs``), shown whatever their level.
SHOWN_EVENTS = frozenset({"webhook", "decision", "publish", "table_taken", "table_loaded"})
# Webhooks not shown: mostly the echoes of the controller's own verdict tags (the files have them).
HIDDEN_WEBHOOKS = ("model_version_tag.",)
_WARNING_LEVELS = frozenset({"WARNING", "ERROR", "CRITICAL"})


def render(line: str) -> tuple[str, str] | None:
    """``(text, style)`` for a JSON log line worth showing, None for the rest."""
    try:
        record: Any = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    level = str(record.get("level", ""))
    if record.get("event") not in SHOWN_EVENTS and level not in _WARNING_LEVELS:
        return None
    if record.get("event") == "webhook" and str(record.get("mlflow_event", "")).startswith(
        HIDDEN_WEBHOOKS
    ):
        return None
    try:
        at = datetime.fromisoformat(str(record.get("time"))).astimezone().strftime("%H:%M:%S")
    except ValueError:
        at = "--:--:--"
    who = str(record.get("service", "?"))
    if record.get("replica"):
        who = f"{who} {str(record['replica'])[:4]}"
    style = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "red"}.get(level, "")
    return f"{at} {who:<11} {record.get('message', '')}", style


class StackLog:
    """Follows the stack's log files from where they ended at construction."""

    def __init__(
        self,
        sources: Callable[[], list[Path]],
        show: Callable[[str, str], None],
        *,
        every_s: float = 0.5,
    ) -> None:
        self._sources = sources
        self._show = show
        self._every_s = every_s
        self._offsets = {p: _size(p) for p in sources()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sigserve-stack-log", daemon=True)

    def start(self) -> StackLog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def poll(self) -> None:
        """Show the lines written since the last poll, in time order across the files."""
        lines: list[str] = []
        for path in self._sources():
            start = self._offsets.get(path, 0)
            if _size(path) < start:
                start = 0  # truncated or replaced
            try:
                with path.open("rb") as f:
                    f.seek(start)
                    chunk = f.read()
            except OSError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
            self._offsets[path] = start + len(complete)
            lines += complete.decode("utf-8", errors="replace").splitlines()
        for raw in sorted(lines, key=_time_of):
            shown = render(raw)
            if shown is not None:
                self._show(*shown)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self.poll()
            except Exception:  # noqa: S112 - a display must never stop the stack
                continue


def stack_log_files(home: Path) -> Callable[[], list[Path]]:
    """The controller's log and every serving replica's (found again each time: replicas
    restart under new ids)."""
    ray_dir = ray_temp_dir(home)

    def files() -> list[Path]:
        found = [home / "logs" / "controller.log"]
        found += sorted((ray_dir / "session_latest" / "logs" / "serve").glob("sigserve_*.log"))
        return [p for p in found if p.is_file()]

    return files


def _time_of(line: str) -> str:
    # ISO 8601 in UTC sorts as text; lines without a time keep their place at the start.
    start = line.find('"time": "')
    return line[start + 9 : start + 41] if start >= 0 else ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0

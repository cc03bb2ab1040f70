"""One log format for every part: JSON lines in files, text on a terminal.

Every process of sigserve logs through the standard library's ``logging``, set up by
``configure``: the controller (``python -m controller``), each serving replica (its own file in
Ray's session log directory) and the launcher. Where the lines go decides their form, unless
``SIGSERVE_LOG_FORMAT`` (``json`` or ``text``) says otherwise:

- a terminal (a TTY): text, ``time level logger: message`` and the trail fields after it;
- a file or a pipe (the local stack's log files, a container's stdout): JSON, one object per
  line, with ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``service`` and
  whatever the line carries.

The fields that let a person follow one registration from webhook to replica (``TRAIL``) are
the same in every part: ``delivery_id`` (the webhook's ``X-MLflow-Delivery-Id``),
``delivery_ids`` (every delivery a reconcile pass worked for), ``model``, ``version``,
``state``, ``policy``, ``revision``, ``changes`` and ``replica``. Lines logged inside a
``trail(...)`` block carry its fields (a context variable, so they follow the work into
``asyncio.to_thread``). See ``docs/operations.md``.

No secret is logged: tokens and the webhook secret are never passed to a logger, and nothing
here adds the environment or the settings to a line.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from pythonjsonlogger.json import JsonFormatter

FORMAT_ENV = "SIGSERVE_LOG_FORMAT"
Format = Literal["json", "text"]
FORMATS: tuple[Format, ...] = ("json", "text")
# The fields that connect one registration's lines across the controller and serving.
TRAIL = (
    "event",
    "delivery_id",
    "delivery_ids",
    "actor",
    "model",
    "version",
    "state",
    "policy",
    "revision",
    "changes",
    "replica",
)
_TRAIL: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "sigserve_log_trail", default=None
)
# Marks the handlers ``configure`` installed, so a second call replaces them.
_OURS = "_sigserve_handler"


@contextlib.contextmanager
def trail(**fields: Any) -> Iterator[None]:
    """Every line logged inside the block (in this task or thread) carries ``fields``."""
    token = _TRAIL.set({**(_TRAIL.get() or {}), **fields})
    try:
        yield
    finally:
        _TRAIL.reset(token)


class TrailFilter(logging.Filter):
    """Adds the fields of the enclosing ``trail`` blocks to a record (its own ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_TRAIL.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value...`` with the trail fields a line carries."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [
            f"{key}={_short(getattr(record, key))}"
            for key in TRAIL
            if key not in ("event", "changes") and getattr(record, key, None) not in (None, [])
        ]
        return f"{text} [{' '.join(fields)}]" if fields else text


def _short(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def json_formatter(service: str, static: Mapping[str, Any] | None = None) -> logging.Formatter:
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        static_fields={"service": service, **(static or {})},
        timestamp="time",
    )


def chosen_format(stream: IO[str] | None, explicit: str | None = None) -> Format:
    """``explicit``, else ``SIGSERVE_LOG_FORMAT``, else text on a terminal and JSON elsewhere."""
    wanted = (explicit or os.environ.get(FORMAT_ENV, "")).strip().lower()
    if wanted in FORMATS:
        return "json" if wanted == "json" else "text"
    if wanted:
        raise ValueError(f"{FORMAT_ENV} must be one of {', '.join(FORMATS)}, not {wanted!r}")
    isatty = getattr(stream, "isatty", None)
    return "text" if stream is not None and isatty is not None and isatty() else "json"


def configure(
    service: str,
    *,
    path: Path | None = None,
    stream: IO[str] | None = None,
    log_format: str | None = None,
    loggers: Sequence[str] = ("",),
    static: Mapping[str, Any] | None = None,
    level: int = logging.INFO,
) -> logging.Handler:
    """Send ``loggers`` (the root logger by default) to ``path`` or ``stream`` (stderr).

    A file gets JSON unless ``log_format`` or ``SIGSERVE_LOG_FORMAT`` say text; a stream gets
    text when it is a terminal. Calling it again replaces the handler it installed.
    """
    handler: logging.Handler
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        form = chosen_format(None, log_format)
    else:
        target = stream if stream is not None else sys.stderr
        handler = logging.StreamHandler(target)
        form = chosen_format(target, log_format)
    handler.setFormatter(json_formatter(service, static) if form == "json" else TextFormatter())
    handler.addFilter(TrailFilter())
    setattr(handler, _OURS, True)
    for name in loggers:
        logger = logging.getLogger(name or None)
        for old in [h for h in logger.handlers if getattr(h, _OURS, False)]:
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
        logger.setLevel(level)
        if name:
            # A package's lines go to this handler alone, not also to whatever the host
            # process (Ray's worker) put on the root logger.
            logger.propagate = False
    return handler

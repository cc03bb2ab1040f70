"""What the check prints as it goes, and its one way of failing: ``CheckFailed``, which the
entry point turns into ``FAILED: ...`` after the figures and the tear-down."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class CheckFailed(Exception):
    pass


def say(message: str) -> None:
    # Flushed at once: the lines interleave with docker's and the shared script's own output.
    print(message, flush=True)


def ok(message: str) -> None:
    say(f"  ✓ {message}")


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    say(f"\n== {title}")
    started = time.monotonic()
    yield
    say(f"  ({time.monotonic() - started:.1f} s)")

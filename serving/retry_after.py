"""A ``Retry-After`` header read as seconds: what the controller's 503s and 429s ask a replica
to wait (``serving.table_poll_failures`` for the table's poll, ``serving.rollout_counts`` for
the rollout reports). Only the seconds form is sent by the controller; anything else, or none,
is ``default``. Never below 0, never past ``cap``."""

from __future__ import annotations

import math

import httpx


def retry_after(response: httpx.Response, *, default: float, cap: float = math.inf) -> float:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        seconds = default
    return min(max(seconds, 0.0), cap)

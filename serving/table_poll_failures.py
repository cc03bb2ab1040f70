"""How a replica's poll of the routing table fails, and how long it waits before asking again.

``serving.table_source`` retries every failed poll with ``poll_wait``: a capped, jittered
backoff, or a busy controller's ``Retry-After`` when that is longer (at most
``BUSY_WAIT_MAX_S``: past it, a bad value). ``FailureLog`` logs a run of failures once, not
once per retry.
"""

from __future__ import annotations

import logging

import httpx
from tenacity import RetryCallState, wait_exponential, wait_random

from serving.retry_after import retry_after

logger = logging.getLogger("serving.table_source")

BACKOFF_FIRST_S = 0.5
# Reconnecting is cheap and a restarted controller should be heard from soon.
BACKOFF_MAX_S = 2.0
# The longest a controller's Retry-After makes a replica wait: past it, a bad value.
BUSY_WAIT_MAX_S = 30.0


class Unauthorized(RuntimeError):
    """The controller refused the replica's serving token: retried, and logged as an error."""


class ControllerBusy(RuntimeError):
    """503 from the controller (it holds as many long-polls as it allows) or a proxy in front
    of it: asked again after its ``Retry-After``."""

    def __init__(self, retry_after_s: float, full: bool) -> None:
        said = "holds as many routing-table polls as it allows" if full else "is unavailable"
        super().__init__(f"the controller {said} (503); asking again in {retry_after_s:g}s")
        self.retry_after_s = retry_after_s


def poll_wait(state: RetryCallState) -> float:
    """The backoff, or a busy controller's Retry-After when that is longer."""
    backoff = wait_exponential(multiplier=BACKOFF_FIRST_S, max=BACKOFF_MAX_S)
    waited = float((backoff + wait_random(0, BACKOFF_FIRST_S / 2))(state))
    exc = state.outcome.exception() if state.outcome is not None else None
    if isinstance(exc, ControllerBusy):
        return max(waited, exc.retry_after_s)
    return waited


def problem_type(response: httpx.Response) -> object:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("type") if isinstance(body, dict) else None


def busy_wait(response: httpx.Response) -> float:
    """A busy controller's ``Retry-After``, at most ``BUSY_WAIT_MAX_S``."""
    return retry_after(response, default=BACKOFF_MAX_S, cap=BUSY_WAIT_MAX_S)


class FailureLog:
    """Failed polls logged once per run of failures (and on each change of reason).

    A controller that stays down (or keeps sending a table of another schema) would otherwise
    log a line per retry; the first failure and each change of reason are enough, and the
    recovery says how many failures it ended.
    """

    def __init__(self) -> None:
        self._reason: str | None = None

    def failed(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        reason = f"{type(exc).__name__}: {exc}"
        if reason != self._reason:
            # A refused token is a configuration error that retrying will not mend.
            logger.log(
                logging.ERROR if isinstance(exc, Unauthorized) else logging.WARNING,
                "routing table poll failed (%s); backing off up to %.1fs between retries",
                reason,
                BACKOFF_MAX_S,
            )
        else:
            logger.debug("routing table poll failed again (%s)", reason)
        self._reason = reason

    def answered(self, failures: int) -> None:
        if failures:
            logger.info("routing table poll answered again after %d failures", failures)
        self._reason = None

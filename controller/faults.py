"""A seam for the fault suite (``tests/fault``): inert unless ``SIGSERVE_FAULT_KILL_AT`` is set.

``SIGSERVE_FAULT_KILL_AT=<point>[:<model>]`` makes the controller SIGKILL itself the first time
it reaches ``<point>`` while working on ``<model>`` (on any model when none is named):

- ``in_transaction``: in ``Store.update_model``, after a changed record and its audit events
  were sent to the database, before the commit;
- ``committed``: in the worker, after a reconcile committed a change, before the table is
  published.

SIGKILL, not an exception: nothing is rolled back or flushed by the process itself, as when the
OOM killer or a lost node ends it. For tests only; never set it in a deployment.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

KILL_AT_ENV = "SIGSERVE_FAULT_KILL_AT"
POINTS = frozenset({"in_transaction", "committed"})
log = logging.getLogger(__name__)


def kill_at(point: str, model: str, before: Callable[[], object] | None = None) -> None:
    """SIGKILL this process if ``SIGSERVE_FAULT_KILL_AT`` names ``point`` (and ``model``).

    ``before`` runs first (say, a flush that sends the transaction's writes to the database).
    """
    wanted = os.environ.get(KILL_AT_ENV)
    if not wanted:
        return
    want_point, _, want_model = wanted.partition(":")
    if want_point != point or want_model not in ("", model):
        return
    if before is not None:
        before()
    log.warning("fault injection (%s): SIGKILL at %s, model %s", KILL_AT_ENV, point, model)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)

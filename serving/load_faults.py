"""Whose fault a failed load is: the artifact's, or the replica's.

A version that fails to load for a reason of its artifact (it cannot be unpickled, it imports a
package the image lacks, MLflow says it has no pyfunc flavor, a file it needs is missing) fails
the same way on every replica of the image: the replica reports it and the controller
quarantines it. A load that failed for a reason of the replica (memory, a full disk, the
network or a timeout while ``load_context`` fetched something) may pass on the next try or on
another replica: it is a 503 with ``Retry-After``, tried again with backoff, and never reported,
because a quarantine is for every replica and a default's lasts until someone releases it.
See ``docs/architecture.md`` ("A load that cannot pass goes back to the controller").

A failure that names neither is the artifact's, as before: model code that raises on load
(``ValueError`` on its own config, say) raises every time. A default is protected from a wrong
guess either way, by a second load from a fresh download before it is reported
(``PyfuncLoader.load(confirm=True)``).
"""

from __future__ import annotations

import errno
import pickle
import urllib.error

import httpx
import requests
from mlflow.exceptions import MlflowException

# The disk is full, or the user's quota is; the kernel is out of memory for a mapping.
_RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.ENOMEM})

# How far down ``__cause__`` / ``__context__`` a cause is looked for (chains are short; a cycle
# must not loop).
_CHAIN_LIMIT = 16


def is_replicas_fault(exc: BaseException) -> bool:
    """Whether a load that raised ``exc`` (after its artifact was downloaded) may pass on
    another try: the replica's memory, disk, network or a timeout.

    The exception itself decides first when it is one of the artifact's own kinds; otherwise a
    cause of the replica anywhere in its chain does (a library that wraps a refused connection
    in its own error still failed on the network).
    """
    if _is_artifacts(exc):
        return False
    return any(_is_replicas(link) for link in _chain(exc))


def _chain(exc: BaseException) -> list[BaseException]:
    links: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in links and len(links) < _CHAIN_LIMIT:
        links.append(current)
        current = current.__cause__ or current.__context__
    return links


def _is_artifacts(exc: BaseException) -> bool:
    # ModuleNotFoundError is an ImportError; a truncated or foreign pickle is UnpicklingError.
    if isinstance(exc, ImportError | pickle.UnpicklingError):
        return True
    # MLflow refusing the model's format: no pyfunc flavor, external artifacts, a bad MLmodel.
    return isinstance(exc, MlflowException) and exc.error_code in (
        "RESOURCE_DOES_NOT_EXIST",
        "BAD_REQUEST",
        "INVALID_PARAMETER_VALUE",
    )


def _is_replicas(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError | ConnectionError | TimeoutError | httpx.TransportError):
        return True
    if isinstance(exc, requests.exceptions.HTTPError | urllib.error.HTTPError):
        # The server is overloaded or down: the replica's luck. Any other status (404, 403) is
        # what the artifact's code asked for.
        return _status(exc) in (429, 502, 503, 504)
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    if isinstance(exc, urllib.error.URLError):
        return True  # no answer at all: DNS, refused, unreachable
    # Last: requests' and urllib's errors are OSErrors too, without an errno.
    return isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS


def _status(exc: requests.exceptions.HTTPError | urllib.error.HTTPError) -> int | None:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code
    return exc.response.status_code if exc.response is not None else None

"""Errors that cross to and from an environment of a version's own, as data; no Ray in here.

A failure in the environment is returned as its kind, type name and message, never as a pickled
exception, and raised again on the replica as an exception of that name (a builtin one when it
is one), so a proof's cause reads ``ValueError: ...`` as it would in the shared environment and
the loader tells the artifact's fault from the replica's as it does for its own loads. A
message never carries a URL's credentials (``serving.environment_builds.redact``): it reaches
the controller and a problem answer.
"""

from __future__ import annotations

import builtins
import contextlib

from mlflow.exceptions import MlflowException

from serving.environment_codec import Encoded
from serving.exceptions import ModelUnavailable
from serving.loader import LoadFailed, NotChecked
from wire.redaction import redact

_MESSAGE_LIMIT = 2000


class HostUnavailable(LoadFailed):
    """The environment's model host is down for now (it died and is started again, or it is
    broken): trying later may pass, the model is not at fault."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause, permanent=False)


class EnvironmentUnavailable(ModelUnavailable, ConnectionError):
    """``HostUnavailable`` raised again on the replica: a 503 with Retry-After to the client,
    and, being a ``ConnectionError``, the replica's fault to a proof (tried again, never a
    quarantine: ``serving.load_faults``)."""


def error_record(exc: BaseException, kind: str = "raised") -> Encoded:
    message = str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        message = exc.args[0]  # str() of a KeyError is its repr: raised again, it quotes again
    record: Encoded = {
        "kind": kind,
        "type": type(exc).__name__,
        # It reaches the controller and a problem answer: a URL's credentials never do.
        "message": redact(message)[:_MESSAGE_LIMIT],
    }
    if isinstance(exc, MlflowException):
        record["error_code"] = exc.error_code
    if isinstance(exc, LoadFailed):
        record["permanent"] = exc.permanent
    return {"error": record}


def raise_error(record: Encoded) -> None:
    """Raise again, on this side, the error ``error_record`` made there."""
    kind, message = record["kind"], record["message"]
    if kind == "not-checked":
        raise NotChecked(message)
    if kind == "load-failed":
        raise LoadFailed(message, permanent=bool(record.get("permanent")))
    if kind == "unavailable":
        raise EnvironmentUnavailable(message)
    if "error_code" in record:
        raise MlflowException(message, error_code=record["error_code"])
    raise remote_exception(record["type"], message)


_TYPES: dict[str, type[Exception]] = {}


def remote_exception(name: str, message: str) -> Exception:
    """An exception named as the one raised in the environment: the builtin of that name (so
    ``MemoryError`` stays the replica's fault), else a class of that name made once."""
    found = getattr(builtins, name, None)
    if isinstance(found, type) and issubclass(found, Exception):
        # A builtin that wants other arguments (UnicodeDecodeError) gets a class of its name.
        with contextlib.suppress(Exception):
            return found(message)
    if name not in _TYPES:
        _TYPES[name] = type(name if name.isidentifier() else "RemoteError", (Exception,), {})
    return _TYPES[name](message)

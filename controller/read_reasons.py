"""What the routing table says when a version's artifacts could not be read.

The table is public (every serving client reads its reasons in a 409), and the raw text of a
failed fetch is not: "connection refused to 10.0.0.5:22" answers a port scan, a stack trace names
the controller's temporary paths. So the public reason comes from the fixed vocabulary below,
whose only parameters are ones the controller checked (a file name it chose, a size, a source
already found allowed, an MLflow error code); the raw text goes to the controller's log
(``controller.reconciler``). docs/security.md, "Artifact sources and sizes".
"""

from __future__ import annotations

from controller.exceptions import (
    RegisteredModelGone,
    RegistryRefused,
    RegistryUnavailable,
    VersionUnreadable,
)

# MLflow's error codes for a permanent refusal: a fixed set, so naming one tells nothing else.
REFUSAL_CODES = frozenset(
    {"PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_PARAMETER_VALUE", "BAD_REQUEST",
     "INVALID_STATE"}
)  # fmt: skip

NOT_ALLOWED = "its source is not an allowed artifact location (SIGSERVE_ARTIFACT_SOURCES)"
UNAVAILABLE = "the artifacts could not be read from the registry or the artifact store"
REFUSED = "the registry or the artifact store refused to give the artifacts"
DELETED = "the version was deleted while being read"
UNREADABLE = "the artifacts are not an MLflow model the controller can read"
UNEXPECTED = "reading the artifacts failed unexpectedly (the controller's log has the error)"


class ReadFailure(VersionUnreadable):
    """A version whose artifacts cannot be read, permanently (it is quarantined).

    ``public`` is its reason as the routing table gives it; ``str()`` is the detail for the
    controller's log, which may name hosts, paths and the store's own words.
    """

    def __init__(self, public: str, detail: str | None = None) -> None:
        super().__init__(detail or public)
        self.public = public


def size_text(size: int) -> str:
    """1048576 -> "1 MiB", 5347737 -> "5.1 MiB": sizes as the reasons give them."""
    value, unit = float(size), "bytes"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    if unit == "bytes":
        return f"{size} bytes"
    return f"{value:.0f} {unit}" if value.is_integer() else f"{value:.1f} {unit}"


def too_large(filename: str, size: int | None, cap: int) -> ReadFailure:
    """A file past the cap; ``size`` None when a read was stopped at the cap (no listing)."""
    seen = f" ({size_text(size)})" if size is not None else ""
    return ReadFailure(f"its {filename} is larger than {size_text(cap)}{seen}")


def public_reason(exc: BaseException) -> str:
    """The routing table's reason for a failed read of a version's artifacts."""
    if isinstance(exc, ReadFailure):
        return exc.public
    if isinstance(exc, RegisteredModelGone):
        return DELETED
    if isinstance(exc, RegistryUnavailable):
        return UNAVAILABLE
    if isinstance(exc, RegistryRefused):
        # controller.registry words it "<error code>: <message>"; only the code is public.
        code = str(exc).split(":", 1)[0]
        return f"{REFUSED} ({code})" if code in REFUSAL_CODES else REFUSED
    if isinstance(exc, VersionUnreadable):
        return UNREADABLE
    return UNEXPECTED

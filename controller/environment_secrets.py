"""Credentials in a version's requirement lines: cut when the lines are read, and blocking.

A ``requirements.txt`` may carry a credential: ``pkg @ git+https://TOKEN@host/org/pkg.git``,
``--index-url https://user:pass@host/simple``, a signed download URL (``?token=...``). Whatever
the controller keeps of a line reaches the routing table (an environment's requirement lines,
which every serving-token holder reads), the admin API, the audit trail and the logs. So the
credential is cut where the lines are read (``ArtifactEnvironment``), before anything keeps them,
and the version is quarantined with a reason that says where credentials belong: the index
settings of the machines that build environments (docs/operations.md, "Pointing builds at a
private index"). Published redacted instead, its environment could only fail to build, minutes
later, with a less useful cause.

What counts as a credential, and what does not (an SSH login, ``${VAR}``), is
``wire.redaction``'s rule, shared with serving.
"""

from __future__ import annotations

from typing import Any

from wire.redaction import SHOWN, redact

__all__ = ["SHOWN", "carries_credential", "credential_reason", "redact", "redacted_facts"]


def carries_credential(line: str) -> bool:
    """Whether ``line`` carries a credential, or carried one that ``redact`` cut."""
    return SHOWN in redact(line)


def credential_reason(line: str) -> str:
    """Why a version whose requirement ``line`` (redacted) carries a credential is not served."""
    return (
        f"requirement line {redact(line)!r} carries a credential (shown as {SHOWN}): the "
        "controller publishes a version's requirements to every serving replica, so it does "
        "not serve this version; put the credential in the package index settings of the "
        "machines that build environments (pip.conf, PIP_INDEX_URL / UV_INDEX_URL, "
        "UV_INDEX_<NAME>_USERNAME and _PASSWORD, or a netrc file) and log the model with the "
        'bare URL (docs/operations.md, "Pointing builds at a private index")'
    )


def redacted_facts(facts: dict[str, Any] | None) -> dict[str, Any] | None:
    """A version's stored environment facts (``asdict(ArtifactEnvironment)``) with credentials
    cut: facts read before credentials were cut where they are read still hold them."""
    if not facts or not facts.get("requirements"):
        return facts
    return {**facts, "requirements": [redact(str(r)) for r in facts["requirements"]]}

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

Not a credential: the login of an SSH URL (``git+ssh://git@github.com/...``), and an
environment variable pip and uv expand when they install (``https://${TOKEN}@host``), which
says nothing secret (the build still needs the variable on the node).
"""

from __future__ import annotations

import re
from typing import Any

SHOWN = "***"

# scheme://userinfo@ : userinfo runs to the last "@" before the host's first "/" (a password
# with a raw "@" in it included).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<userinfo>[^/\s]*)@")
# A query parameter whose name says it authenticates (a signed or token URL).
_SECRET_PARAMETER = re.compile(
    r"(?P<name>[?&;](?:[A-Za-z0-9_.\-]*(?:token|key|secret|password|passwd|pwd|auth|sig|"
    r"signature|credential)[A-Za-z0-9_.\-]*)=)(?P<value>[^&;#\s]+)",
    re.IGNORECASE,
)
_VARIABLES_ONLY = re.compile(r"(?:\$\{[A-Za-z_][A-Za-z0-9_]*\}|:)+")
_SSH_SCHEMES = frozenset({"ssh", "git+ssh"})


def _userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match["scheme"].lower(), match["userinfo"]
    if not userinfo or _VARIABLES_ONLY.fullmatch(userinfo):
        return match[0]
    if scheme in _SSH_SCHEMES and ":" not in userinfo:
        return match[0]  # the SSH login; its key is the node's own
    return f"{match['scheme']}://{SHOWN}@"


def redact(line: str) -> str:
    """``line`` with every credential it carries replaced by ``***``."""
    line = _USERINFO.sub(_userinfo, line)
    return _SECRET_PARAMETER.sub(lambda m: f"{m['name']}{SHOWN}", line)


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

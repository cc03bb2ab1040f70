"""Credentials cut out of text before anyone keeps it: one rule for the controller and serving.

A URL's userinfo (``scheme://user:pass@`` or ``scheme://TOKEN@``) and a query parameter whose
name says it authenticates (``?token=``, ``X-Amz-Signature=``, ``sig=``) become ``***``. The
rule is applied to requirement lines where the controller reads them
(``controller.environment_secrets``) and to whatever serving reports about an environment: a
build's cause (uv's own words may quote an index URL), errors that cross from an environment's
actor (``serving.environment_errors``). docs/security.md, "Credentials around environments of
their own".

Not a credential: the login of an SSH URL (``git+ssh://git@github.com/...``), and environment
variables pip and uv expand (``https://${TOKEN}@host``). A parameter's name must *be* a weak
word (``key``, ``auth``, ``sig``...), or a segment of it after ``_``, ``-`` or ``.``, so
``?author=`` or ``?design=`` are left alone; strong words (``token``, ``secret``, ``password``,
``credential``) count anywhere in the name.
"""

from __future__ import annotations

import re

SHOWN = "***"

# scheme://userinfo@ : userinfo runs to the last "@" before the host's first "/" (a password
# with a raw "@" in it included); quotes end it, as they end a URL quoted in a message.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<userinfo>[^/\s'\"]*)@")
_STRONG = r"[A-Za-z0-9]*(?:token|secret|password|passwd|credential)[A-Za-z0-9]*"
_WEAK = r"(?:key|apikey|auth|pwd|sig|signature)s?"
_SECRET_PARAMETER = re.compile(
    rf"(?P<name>[?&;](?:(?:[A-Za-z0-9]+[_.\-])*(?:{_STRONG}|{_WEAK})"
    rf"|{_STRONG}(?:[_.\-][A-Za-z0-9]+)*)=)(?P<value>[^&;#\s'\"]+)",
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


def redact(text: str) -> str:
    """``text`` with every credential it carries replaced by ``***``."""
    text = _USERINFO.sub(_userinfo, text)
    return _SECRET_PARAMETER.sub(lambda m: f"{m['name']}{SHOWN}", text)

"""The routing table's signature: whoever cannot sign cannot choose what replicas run.

A replica downloads and runs what its table names, so the table is only taken when it carries
an HMAC-SHA256 made with a key only the controller and the serving nodes hold. The key is
derived from the serving token (``SIGSERVE_SERVING_TOKEN``), which both already have, with a
label of its own, so a signature is never a token's HMAC usable elsewhere and the token itself
never goes over the wire in an answer. See docs/security.md, "The routing table's signature".

What is signed is the table's canonical JSON (``canonical_json``): the parsed document dumped
with sorted keys, no whitespace and ASCII escapes, so two parties that parse the same document
sign the same bytes whatever its formatting, and a replica validates exactly the bytes whose
signature it checked (no second parser that could read them otherwise). Fields a replica does
not know are signed too: it checks the document as sent, not its own model of it.

The signature travels beside the table, never inside it: in the long-poll's
``X-Sigserve-Table-Signature`` header (the body stays the table, as tools and old replicas read
it) and, in the copy replicas keep in Ray's key-value store, in an envelope
``{"signature": ..., "table": {...}}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

SIGNATURE_HEADER = "X-Sigserve-Table-Signature"
# A scheme prefix, so another kind of signature (an Ed25519 key) can come without ambiguity.
_SCHEME = "v1="
_KEY_LABEL = b"sigserve table v1"


class TableSignatureError(ValueError):
    """A table whose signature is missing or does not match: never taken."""


class UnsignedTable(TableSignatureError):
    pass


class ForgedTable(TableSignatureError):
    pass


def canonical_json(document: Any) -> bytes:
    """The one byte form of a JSON document that is signed and compared."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def table_key(serving_token: str) -> bytes:
    """The signing key: HMAC(serving token, label), a key for tables and for nothing else."""
    return hmac.new(serving_token.encode(), _KEY_LABEL, hashlib.sha256).digest()


def sign(canonical: bytes, key: bytes) -> str:
    return _SCHEME + hmac.new(key, canonical, hashlib.sha256).hexdigest()


def verify(canonical: bytes, signature: str | None, key: bytes) -> None:
    """Raise ``UnsignedTable`` or ``ForgedTable`` unless ``signature`` signs ``canonical``.

    The messages name what was wrong, never the key or the signatures (a log line must not
    help forge the next one).
    """
    if not signature:
        raise UnsignedTable("the routing table carries no signature")
    expected = sign(canonical, key)
    # Constant time: the comparison must not tell how much of a guess was right.
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise ForgedTable(
            "the routing table's signature does not match (signed with another serving token, "
            "or not by the controller)"
        )

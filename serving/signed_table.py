"""Reading a routing table as a replica may take it: signed, of this schema, then validated.

Every table a replica takes passes here, from the controller's long-poll and from the copy in
Ray's key-value store alike (``serving.table_source``). In this order:

1. the JSON is parsed and put in canonical form (``wire.table_signature.canonical_json``);
2. with a key (the replica has its serving token), the signature must sign that form, or the
   table is refused (``UnsignedTable``, ``ForgedTable``) whatever it says;
3. its ``schema_version`` must be one this replica reads (``SCHEMAS_READ``, else
   ``SchemaMismatch``), before anything else of it is read: a newer schema may not validate at
   all, an older one may validate and mean something else;
4. the canonical bytes, the ones the signature covers, are validated as a ``RoutingTable``.

The store keeps the table with its signature (``SignedTable.stored``): a replica that restores
it checks it as it would the controller's answer, so writing the key is no way around the
signature. See docs/security.md, "The routing table's signature".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from wire.routing_table import SCHEMAS_READ, RoutingTable
from wire.table_signature import canonical_json, verify


class SchemaMismatch(ValueError):
    """A table written for a ``schema_version`` this replica does not read."""


@dataclass(frozen=True)
class SignedTable:
    table: RoutingTable
    # The canonical JSON the signature covers, as received: fields this replica does not know
    # are in it, so the copy it stores still verifies for a replica that does.
    canonical: bytes
    signature: str | None

    def stored(self) -> str:
        """The envelope kept in the store: the table and its signature, together."""
        return f'{{"signature":{json.dumps(self.signature)},"table":{self.canonical.decode()}}}'


def read_answer(body: str | bytes, signature: str | None, key: bytes | None) -> SignedTable:
    """A long-poll answer: the table in the body, its signature from the header."""
    return _read(json.loads(body), signature, key)


def read_stored(raw: str | bytes, key: bytes | None) -> SignedTable:
    """The store's envelope; a bare table (left by a release before signatures) is unsigned."""
    document = json.loads(raw)
    if isinstance(document, dict) and "table" in document and "schema_version" not in document:
        signature = document.get("signature")
        return _read(document["table"], signature if isinstance(signature, str) else None, key)
    return _read(document, None, key)


def decode(raw: str | bytes) -> RoutingTable:
    """An unsigned table's JSON, its ``schema_version`` checked first (tests and tools)."""
    return _read(json.loads(raw), None, None).table


def _read(document: Any, signature: str | None, key: bytes | None) -> SignedTable:
    canonical = canonical_json(document)
    if key is not None:
        verify(canonical, signature, key)
    found = document.get("schema_version") if isinstance(document, dict) else None
    if found not in SCHEMAS_READ:
        reads = " and ".join(str(v) for v in sorted(SCHEMAS_READ))
        raise SchemaMismatch(
            f"routing table has schema_version {found!r}; this replica reads {reads}"
        )
    return SignedTable(RoutingTable.model_validate_json(canonical), canonical, signature)

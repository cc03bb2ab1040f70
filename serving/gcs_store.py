"""The last routing table, kept in Ray's GCS key-value store.

Why: the long-poll alone is not statically stable. An ingress replica that starts (after a crash,
a scale-up, a node loss) while the controller is down would hold no table and answer 503 to
everything. Every replica therefore writes each table it accepts here, and a starting replica
reads it before anything else, so the app keeps answering from the last decision for as long
as the Ray cluster lives.

Whoever can write this key (any process on the cluster) could put a table of their own here, so
what is kept is the table with the controller's signature (``serving.signed_table``), and a
replica restores only a copy that verifies with its serving token (docs/security.md, "The
routing table's signature"). This module only keeps the text.

``ray.experimental.internal_kv`` is an internal API (Ray Serve keeps its own checkpoints in it);
it is wrapped here, in one place, so that a change in Ray touches one file. The calls block on a
gRPC round trip to the GCS: callers run them in a thread.
"""

from __future__ import annotations

from collections.abc import Callable

from ray.experimental import internal_kv

_NAMESPACE = b"sigserve"

# Ray leaves these untyped; the aliases state the types they have.
_initialized: Callable[[], bool] = internal_kv._internal_kv_initialized
_get: Callable[..., bytes | None] = internal_kv._internal_kv_get
_put: Callable[..., bool] = internal_kv._internal_kv_put


class GcsTableStore:
    def __init__(self, app_name: str) -> None:
        self._key = f"sigserve/routing-table/{app_name}".encode()

    def read(self) -> str | None:
        if not _initialized():
            return None
        raw = _get(self._key, namespace=_NAMESPACE)
        return raw.decode() if raw else None

    def write(self, table_json: str) -> None:
        if _initialized():
            _put(self._key, table_json.encode(), overwrite=True, namespace=_NAMESPACE)

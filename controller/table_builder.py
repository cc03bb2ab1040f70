"""Turning decisions into the routing table the serving app obeys."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

from controller.own_environments import environment_of
from controller.proofs import awaits_proof
from controller.records import ModelRecord
from wire.artifact_manifest import ManifestFile
from wire.routing_table import ModelEntry, Rollout, RoutingTable, VersionEntry
from wire.table_signature import canonical_json

E = TypeVar("E", bound=BaseModel)


def build_table(
    models: list[ModelRecord],
    revision: int,
    epoch: str,
    rollouts: Mapping[str, Rollout] | None = None,
) -> RoutingTable:
    """The table for ``models``; ``rollouts``: the rollout under way per model name.

    The table is kept for as long as it is served (and a publish keeps its entries to build
    the next one on), so it is built small: what is equal across the versions built here is
    made once and shared (a manifest file with the same path, size and digest: the files a
    retrain leaves unchanged, every version registered from one logged model; equal strings:
    signatures, sources, paths), and the objects of a class share one set of field names
    (``_entry``). Measured per version with 7 files (``tests/unit/test_table_memory.py`` has
    the rules, benchmarks/controller_memory.py the run): 4.9 KB before; 2.6 KB with every
    file and string distinct, 1.4 KB when only MLmodel differs between a model's versions,
    0.8 KB for versions of one artifact. Sharing is safe because every part is frozen; it lasts
    one call, so nothing is kept to find the equal parts again (a publish builds the models
    that moved, each model's versions together).
    """
    rollouts = rollouts or {}
    share = _Sharing()
    return RoutingTable(
        revision=revision,
        epoch=epoch,
        models={
            m.name: _entry(
                ModelEntry,
                name=m.name,
                default_version=m.default_version,
                contract=share.strings(m.contract),
                max_batch_size=m.max_batch_size,
                batch_wait_ms=m.batch_wait_ms,
                predict_timeout_s=m.predict_timeout_s,
                rollout=rollouts.get(m.name),
                versions={
                    v.version: _entry(
                        VersionEntry,
                        version=v.version,
                        state=v.state,
                        reasons=list(v.reasons),
                        signature=share.strings(v.signature),
                        source=share.string(v.artifact_uri),
                        mlmodel_digest=share.string(v.mlmodel_digest),
                        manifest=[share.file(f) for f in v.manifest]
                        if v.manifest is not None
                        else None,
                        warnings=list(v.warnings),
                        awaiting_proof=awaits_proof(v),
                        environment=environment_of(v),
                    )
                    for v in m.sorted_versions()
                },
            )
            for m in sorted(models, key=lambda m: m.name)
            if m.deleted_at is None
        },
    )


def _entry(cls: type[E], **values: Any) -> E:
    """``cls(**values)``, with the set of the names given (``__pydantic_fields_set__``, which
    pydantic keeps per object and nothing here reads) one set shared by every object of
    ``cls`` given the same names (a file too large to hash is given no ``sha256``): 728 bytes of
    a version entry's 1,200, and 216 of a manifest file's 519 (measured). Safe because the
    objects are frozen: pydantic changes the set only on an assignment (refused) and
    ``model_copy`` copies it before it adds to it."""
    made = cls(**values)
    given = _GIVEN.setdefault((cls, frozenset(values)), set(values))
    object.__setattr__(made, "__pydantic_fields_set__", given)
    return made


# Per class and names given, the one set of field names those objects share (see ``_entry``).
_GIVEN: dict[tuple[type[BaseModel], frozenset[str]], set[str]] = {}


class _Sharing:
    """Equal frozen parts of one build, made once (see ``build_table``)."""

    def __init__(self) -> None:
        self._strings: dict[str, str] = {}
        self._files: dict[tuple[object, ...], ManifestFile] = {}

    def string(self, value: str | None) -> str | None:
        return None if value is None else self._strings.setdefault(value, value)

    def strings(self, value: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        return {
            self._strings.setdefault(k, k): self._strings.setdefault(v, v)
            if isinstance(v, str)
            else v
            for k, v in value.items()
        }

    def file(self, value: Mapping[str, Any]) -> ManifestFile:
        try:
            key = tuple(sorted(value.items()))
            found = self._files.get(key)
        except TypeError:  # a value that is not hashable: not one a valid file has
            return ManifestFile.model_validate(value)
        if found is None:
            # Validation keeps the very strings it was given: the shared ones.
            found = self._files[key] = _entry(
                ManifestFile,
                **{k: self.string(v) if isinstance(v, str) else v for k, v in value.items()},
            )
        return found


def content_digest(table: RoutingTable) -> str:
    """A digest of the decisions alone: equal content means no new revision."""
    content = table.model_dump(mode="json", exclude={"revision", "epoch"})
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def canonical_table(table: RoutingTable) -> bytes:
    """``canonical_json(table.model_dump(mode="json"))``, byte for byte, made a model at a time.

    The dump of a whole table is a dict of every version, manifest files included (~2.4 KB of
    Python objects per version where the JSON is ~1.3 KB): at 50,000 versions ~150 MB alive at
    once only to be encoded, and the heap it took is not all given back. Per model, only that
    model's dump is alive beside the bytes made so far.
    """
    body = io.BytesIO()
    for part in _canonical_parts(table):
        body.write(part)
    return body.getvalue()


def gzipped_table(table: RoutingTable, key: bytes | None) -> tuple[bytes, str | None]:
    """``canonical_table(table)`` gzipped, and ``wire.table_signature.sign`` of it (the plain
    bytes) with ``key`` (None: unsigned), made a model at a time: the plain body never exists
    whole, only each model's part on its way into the compressor and the HMAC.

    What the long-poll keeps (docs/architecture.md, "What the controller keeps in memory per
    version"): a table's JSON repeats its field names and the sources and files versions
    share. Measured at 10,000 versions: 11.1 MB of JSON kept as 1.6 MB with every version's
    files distinct, 10.4 MB as 0.2 MB in the registry-scale benchmark's registry
    (benchmarks/controller_memory.py --register).
    """
    mac = hmac.new(key, digestmod=hashlib.sha256) if key is not None else None
    # wbits 31: a gzip member (header and CRC), what ``Content-Encoding: gzip`` names.
    gzip = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    body = io.BytesIO()
    for part in _canonical_parts(table):
        if mac is not None:
            mac.update(part)
        body.write(gzip.compress(part))
    body.write(gzip.flush())
    # ``sign``'s form ("v1=" and the hex HMAC-SHA256), fed a part at a time; the unit test
    # holds the two equal.
    return body.getvalue(), None if mac is None else "v1=" + mac.hexdigest()


# zlib's level 1: the table's repeats compress at any level; 6 (zlib's default) made the body
# 13% smaller for 11% more time (10,000 versions, files distinct), CPU at every new table.
GZIP_LEVEL = 1


def _canonical_parts(table: RoutingTable) -> Iterator[bytes]:
    before, after = around_models(table.model_dump(mode="json", exclude={"models"}), (",", ":"))
    yield before.encode() + b"{"
    for i, name in enumerate(sorted(table.models)):
        # Each model's dump is dropped before the next is made.
        yield (
            (b"," if i else b"")
            + canonical_json(name)
            + b":"
            + canonical_json(table.models[name].model_dump(mode="json"))
        )
    yield b"}" + after.encode()


def around_models(head: Mapping[str, Any], separators: tuple[str, str]) -> tuple[str, str]:
    """The JSON of ``{**head, "models": ...}`` (keys sorted, ASCII, ``separators``) before and
    after the models' value. Made from the fields on either side of ``models`` in key order,
    not found in an encoded head: a later field holding an object with a ``models`` key (it
    sorts first if named before it) cannot be taken for the table's own."""
    item, key = separators

    def members(fields: Mapping[str, Any]) -> str:
        return json.dumps(fields, sort_keys=True, separators=separators)[1:-1]

    lower = {k: v for k, v in head.items() if k < "models"}
    upper = {k: v for k, v in head.items() if k > "models"}
    before = "{" + members(lower) + (item if lower else "") + '"models"' + key
    return before, (item + members(upper) if upper else "") + "}"

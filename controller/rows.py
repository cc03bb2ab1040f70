"""Records <-> ORM rows, field by field: the one place the two are mapped.

A record's fields and its row's columns share their names, so the mapping is read off the
dataclasses rather than written out per field (three hand-written copies of it had to be kept in
step). What differs is converted here: the version state (an enum, a string in its column),
times (UTC; SQLite returns them without an offset, PostgreSQL in the session's zone) and lists
(copied, so a record never shares a list with a row). ``test_controller_store`` checks that every
record field has its column.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from controller.records import ModelRecord, VersionRecord
from controller.schema import ModelVersionRow, RegisteredModelRow
from wire.routing_table import VersionState

MODEL_FIELDS = tuple(f.name for f in fields(ModelRecord) if f.name != "versions")
# Read with the row, written only by the store's conditional UPDATE (``Store.update_model``).
_STORE_OWNED = frozenset({"generation"})
VERSION_FIELDS = tuple(f.name for f in fields(VersionRecord))


def utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is not None:
        return moment.astimezone(UTC)
    return moment.replace(tzinfo=UTC)


def _from_column(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, list):
        return list(value)
    return value


def _to_column(value: Any) -> Any:
    if isinstance(value, VersionState):
        return value.value
    if isinstance(value, list):
        return list(value)
    return value


def to_record(row: RegisteredModelRow) -> ModelRecord:
    versions = {}
    for vrow in row.versions:
        values = {name: _from_column(getattr(vrow, name)) for name in VERSION_FIELDS}
        values["state"] = VersionState(vrow.state)
        values["warnings"] = list(vrow.warnings or [])
        versions[vrow.version] = VersionRecord(**values)
    values = {name: _from_column(getattr(row, name)) for name in MODEL_FIELDS}
    return ModelRecord(**values, versions=versions)


def write_row(row: RegisteredModelRow, record: ModelRecord, now: datetime) -> None:
    """Bring ``row`` and its version rows to ``record``: versions it lacks are removed."""
    for name in MODEL_FIELDS:
        if name not in _STORE_OWNED:
            setattr(row, name, _to_column(getattr(record, name)))
    row.updated_at = now
    existing = {v.version: v for v in row.versions}
    for gone in set(existing) - set(record.versions):
        row.versions.remove(existing[gone])
    for version in record.versions.values():
        vrow = existing.get(version.version)
        if vrow is None:
            vrow = ModelVersionRow(model_name=record.name, version=version.version)
            row.versions.append(vrow)
        vrow.number = version.number
        for name in VERSION_FIELDS:
            setattr(vrow, name, _to_column(getattr(version, name)))

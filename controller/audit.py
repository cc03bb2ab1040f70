"""The audit log: what changed about a model, when, by whom, from what to what.

Events are computed from two records, the one read and the one written, inside the write
transaction (``Store.update_model``), so no change can be written without its event and a
repeated reconcile that changes nothing logs nothing. Kinds:

- ``model``     the model was first stored, or forgotten (deleted from the registry)
- ``pin``       the default version (and with it maybe the contract) changed
- ``policy``    the compatibility or environment policy changed
- ``override``  a version was quarantined or released by hand, or the override removed
- ``decision``  a version's state or reasons changed
- ``load``      a serving replica reported it could not load a version's artifact, or the
                report was cleared (a release by hand, another artifact)
- ``alias``     a move of the registry's default alias was refused (the reasons in ``after``)
- ``registry``  the registry refused (or accepts again) the controller's tags or alias

Actors are short strings: ``admin`` (the admin token), ``webhook:<delivery id>``, ``resync``,
``retry``, ``serving:<replica>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.records import ModelRecord, VersionRecord


@dataclass(frozen=True)
class AuditEvent:
    model: str
    version: str | None
    kind: str
    actor: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    at: datetime | None = None
    id: int | None = None


def _decision(v: VersionRecord | None) -> dict[str, Any] | None:
    if v is None:
        return None
    return {"state": v.state.value, "reasons": list(v.reasons)}


def _summary(m: ModelRecord | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {"default_version": m.default_version, "versions": sorted(m.versions, key=_number)}


def diff(
    name: str, before: ModelRecord | None, after: ModelRecord | None, actor: str
) -> list[AuditEvent]:
    if before is None and after is None:
        return []
    if before is None or after is None:
        born = [AuditEvent(name, None, "model", actor, _summary(before), _summary(after))]
        if after is None:
            return born
        # A new model's first decisions and default are logged as changes from nothing.
        empty = ModelRecord(after.name, after.policy, after.environment_policy)
        return born + diff(name, empty, after, actor)
    events: list[AuditEvent] = []
    if before.deleted_at != after.deleted_at:
        gone = after.deleted_at is not None
        events.append(
            AuditEvent(name, None, "model", actor, {"deleted": not gone}, {"deleted": gone})
        )
    if (before.default_version, before.contract) != (after.default_version, after.contract):
        events.append(
            AuditEvent(
                name,
                after.default_version,
                "pin",
                actor,
                {"default_version": before.default_version, "contract": before.contract},
                {"default_version": after.default_version, "contract": after.contract},
            )
        )
    if before.alias_refusal != after.alias_refusal and after.alias_refusal is not None:
        refused = after.alias_refusal
        events.append(
            AuditEvent(
                name,
                str(refused.get("version")),
                "alias",
                actor,
                {"default_version": after.default_version},
                refused,
            )
        )
    if before.registry_warning != after.registry_warning:
        events.append(
            AuditEvent(
                name,
                None,
                "registry",
                actor,
                {"warning": before.registry_warning},
                {"warning": after.registry_warning},
            )
        )
    policies = ("policy", "environment_policy")
    if any(getattr(before, p) != getattr(after, p) for p in policies):
        events.append(
            AuditEvent(
                name,
                None,
                "policy",
                actor,
                {p: getattr(before, p) for p in policies},
                {p: getattr(after, p) for p in policies},
            )
        )
    for key in sorted(set(before.versions) | set(after.versions), key=_number):
        old, new = before.versions.get(key), after.versions.get(key)
        if (old.override if old else None) != (new.override if new else None):
            events.append(
                AuditEvent(
                    name,
                    key,
                    "override",
                    actor,
                    old.override if old else None,
                    new.override if new else None,
                )
            )
        failures = (old.load_failure if old else None, new.load_failure if new else None)
        if failures[0] != failures[1]:
            events.append(AuditEvent(name, key, "load", actor, *failures))
        if _decision(old) != _decision(new):
            events.append(AuditEvent(name, key, "decision", actor, _decision(old), _decision(new)))
    return events


def _number(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (0, version)

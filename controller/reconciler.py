"""Reconcile one registered model: read actual state, decide, record, publish. Safe to repeat.

Registry reads happen outside the write lock (they are slow); the read-decide-write of the
stored record happens inside it, from a fresh read, so a concurrent admin change is never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from controller.compatibility import Policy
from controller.decisions import decide_all
from controller.exceptions import RegisteredModelGone, RegistryUnavailable
from controller.records import ModelRecord, Signature, VersionRecord
from controller.registry import ObservedVersion, Registry
from controller.store import Store
from sigserve.routing_table import VersionState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    changed: bool
    # Versions left pending by a temporary failure: the worker retries the model later.
    retry_reason: str | None = None


def merge_observed(
    current: ModelRecord,
    observed: list[ObservedVersion],
    signatures: dict[str, Signature | None],
    failures: dict[str, str],
) -> ModelRecord:
    """The stored record brought up to what the registry says; versions it lacks are dropped."""
    versions: dict[str, VersionRecord] = {}
    for ov in observed:
        known = current.versions.get(ov.version)
        if known is None or (known.source and ov.source and known.source != ov.source):
            # A new version, or a model deleted and registered again under the same name whose
            # version number came back with other contents: nothing known about it holds.
            known = VersionRecord(version=ov.version)
        known = replace(known, source=ov.source)
        if not ov.ready:
            known = replace(
                known,
                state=VersionState.PENDING,
                reasons=[f"registry status is {ov.status}; waiting for READY"],
            )
        elif not known.signature_read and ov.version in signatures:
            known = replace(known, signature=signatures[ov.version], signature_read=True)
        elif not known.signature_read:
            why = failures.get(ov.version, "not read yet")
            known = replace(
                known,
                state=VersionState.PENDING,
                reasons=[f"its signature could not be read yet ({why}); retrying"],
            )
        versions[ov.version] = known
    return replace(current, versions=versions)


def _known_and_read(record: ModelRecord | None, ov: ObservedVersion) -> bool:
    known = record.versions.get(ov.version) if record else None
    return bool(known and known.signature_read and (not known.source or known.source == ov.source))


class Reconciler:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        default_policy: Policy,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._registry = registry
        self._default_policy = default_policy
        self._clock = clock

    def reconcile(self, name: str) -> Outcome:
        try:
            observed = self._registry.versions(name)
        except RegisteredModelGone:
            gone = self._store.delete_model(name)
            if gone:
                log.info("registered model %s is gone; forgot it", name)
            return Outcome(changed=gone)

        before = self._store.load_model(name)
        to_read = [ov.version for ov in observed if ov.ready and not _known_and_read(before, ov)]
        signatures: dict[str, Signature | None] = {}
        failures: dict[str, str] = {}
        for version in to_read:
            try:
                signatures[version] = self._registry.signature(name, version)
            except RegisteredModelGone:
                failures[version] = "the version was deleted while being read"
            except RegistryUnavailable as exc:
                failures[version] = str(exc)

        def decide(current: ModelRecord | None) -> ModelRecord:
            base = current or ModelRecord(name=name, policy=self._default_policy.value)
            return decide_all(merge_observed(base, observed, signatures, failures), self._clock())

        # Decided from a fresh read inside the write transaction: an admin change made while
        # the registry was being read is built on, never overwritten.
        decided = self._store.update_model(name, decide)
        assert decided is not None
        changed = before is None or decided != before
        for v in decided.sorted_versions():
            if changed and (before is None or before.versions.get(v.version) != v):
                log.info("%s v%s: %s %s", name, v.version, v.state.value, "; ".join(v.reasons))
        retry = "; ".join(f"v{k}: {v}" for k, v in failures.items()) or None
        return Outcome(changed=changed, retry_reason=retry)

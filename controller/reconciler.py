"""Reconcile one registered model: read actual state, decide, record, publish. Safe to repeat.

Registry reads happen outside the write lock (they are slow); the read-decide-write of the
stored record happens inside it, from a fresh read, so a concurrent admin change is never lost.

Identity, as Kubernetes does with an object's UID: a registered model is its name *and* its
creation time in the registry. A model deleted and created again under the same name is a new
model: its first version sets a new contract, and nothing stored about the old one (decisions,
pin, policies) carries over. A version is its number *and* its source: a number that comes back
with another source is a new version, read and decided from scratch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from controller.artifacts import ArtifactFacts
from controller.compatibility import Policy
from controller.decisions import NOT_READ, decide_all, is_read
from controller.environment import EnvironmentPolicy, ServingEnvironment
from controller.exceptions import RegisteredModelGone, RegistryUnavailable
from controller.records import ModelRecord, VersionRecord
from controller.registry import ObservedVersion, Registry
from controller.store import Store
from sigserve.routing_table import VersionState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    changed: bool
    # Versions left pending by a temporary failure: the worker retries the model later.
    retry_reason: str | None = None


def _with_facts(known: VersionRecord, facts: ArtifactFacts) -> VersionRecord:
    return replace(
        known,
        signature=facts.signature,
        signature_read=True,
        artifact_uri=facts.source,
        mlmodel_digest=facts.mlmodel_digest,
        environment=asdict(facts.environment),
        # What was decided about other contents does not hold for these.
        decided_against=None,
    )


def merge_observed(
    current: ModelRecord,
    observed: list[ObservedVersion],
    facts: dict[str, ArtifactFacts],
    failures: dict[str, str],
) -> ModelRecord:
    """The stored record brought up to what the registry says; versions it lacks are dropped."""
    versions: dict[str, VersionRecord] = {}
    for ov in observed:
        known = current.versions.get(ov.version)
        if known is None or (known.source and ov.source and known.source != ov.source):
            # A new version, or a version number that came back with other contents:
            # nothing known about it holds.
            known = VersionRecord(version=ov.version)
        known = replace(known, source=ov.source)
        if not ov.ready:
            known = replace(
                known,
                state=VersionState.PENDING,
                reasons=[f"registry status is {ov.status}; waiting for READY"],
            )
        elif ov.version in facts:
            known = _with_facts(known, facts[ov.version])
        elif not is_read(known):
            why = failures.get(ov.version, NOT_READ)
            known = replace(
                known,
                state=VersionState.PENDING,
                reasons=[f"its artifact could not be read yet ({why}); retrying"],
            )
        versions[ov.version] = known
    return replace(current, versions=versions)


def _known_and_read(record: ModelRecord | None, ov: ObservedVersion) -> bool:
    known = record.versions.get(ov.version) if record else None
    return bool(known and is_read(known) and (not known.source or known.source == ov.source))


class Reconciler:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        environment: ServingEnvironment,
        *,
        default_policy: Policy = Policy.BACKWARD,
        default_environment_policy: EnvironmentPolicy = EnvironmentPolicy.STRICT,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._registry = registry
        self._environment = environment
        self._default_policy = default_policy
        self._default_environment_policy = default_environment_policy
        self._clock = clock

    def _new_model(self, name: str, created_at: int | None) -> ModelRecord:
        return ModelRecord(
            name=name,
            policy=self._default_policy.value,
            environment_policy=self._default_environment_policy.value,
            registry_created_at=created_at,
        )

    def reconcile(self, name: str) -> Outcome:
        try:
            created_at = self._registry.registered_model_created_at(name)
            observed = self._registry.versions(name)
        except RegisteredModelGone:
            gone = self._store.delete_model(name)
            if gone:
                log.info("registered model %s is gone; forgot it", name)
            return Outcome(changed=gone)

        before = self._store.load_model(name)
        if before is not None and _recreated(before, created_at):
            log.info("registered model %s was deleted and created again: a new model", name)
            before = None
        to_read = [ov.version for ov in observed if ov.ready and not _known_and_read(before, ov)]
        facts: dict[str, ArtifactFacts] = {}
        failures: dict[str, str] = {}
        for version in to_read:
            try:
                facts[version] = self._registry.artifact(name, version)
            except RegisteredModelGone:
                failures[version] = "the version was deleted while being read"
            except RegistryUnavailable as exc:
                failures[version] = str(exc)

        def decide(current: ModelRecord | None) -> ModelRecord:
            if current is None or _recreated(current, created_at):
                current = self._new_model(name, created_at)
            elif current.registry_created_at is None:
                current = replace(current, registry_created_at=created_at)
            merged = merge_observed(current, observed, facts, failures)
            return decide_all(merged, self._clock(), self._environment)

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


def _recreated(record: ModelRecord, created_at: int | None) -> bool:
    known = record.registry_created_at
    return known is not None and created_at is not None and known != created_at

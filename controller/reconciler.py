"""Reconcile one registered model: read actual state, decide, record, publish. Safe to repeat.

Registry reads happen outside the write lock (they are slow); the decision is written inside
it, built on a fresh read, and only if the model was not written since the reconcile read it
with its registry snapshot (its generation, ``controller/store.py``): a decision from an older
snapshot (another controller's, a leader's that stepped down) never commits over a newer one
or over an admin change; the write raises ``GenerationConflict`` and the worker requeues. A pass
whose record was not written since its model's last pass that found nothing to do, and whose
reads are what that pass read, stops before the decision (``controller/unchanged.py``).

Identity: the endpoint's clients know a model by its name, so the *contract* (and the pin and
the policies) belong to the name. A model deleted from the registry is not forgotten: its record
stays as a tombstone (no versions, not served, 404 in the admin API) holding the contract. A
model created again under that name (seen as another creation time in the registry, or as a
tombstone coming back) keeps the contract: every one of its versions is a new artifact, read and
decided from scratch against it, so an incompatible first version is quarantined, not served to
the old clients, whether or not the controller saw the gap. Giving the name a new API is an
explicit act: a forced pin. Likewise a version number that comes back with another source is a
new version.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from controller.artifact_sources import LocationPolicy
from controller.artifacts import ArtifactFacts
from controller.compatibility import Policy
from controller.decisions import decide_all, is_read
from controller.environment import EnvironmentPolicy, ServingEnvironment
from controller.environment_policy import with_policy_values
from controller.exceptions import (
    GenerationConflict,
    RegisteredModelGone,
    RegistryError,
    RegistryRefused,
    RegistryUnavailable,
    SteppedDown,
)
from controller.merge import merge_observed as merge_observed  # dry_run and tests import it here
from controller.own_writes import OwnWrites, RememberingWriter
from controller.read_reasons import public_reason
from controller.records import ModelRecord
from controller.registry import ObservedVersion, RegistryPort, RegistryWriter
from controller.registry_sync import (
    ENVIRONMENT_TAG,
    batching_from_tags,
    follow_alias,
    policies_from_tags,
    proof_from_tags,
    registry_behind,
    write_back,
)
from controller.store import Store
from controller.unchanged import Kept, Stamp, Unchanged, reads_digest
from controller.write_back_lane import Fenced

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    changed: bool
    # Versions left pending by a temporary failure: the worker retries the model later.
    retry_reason: str | None = None
    # Writing the verdict back to the registry (tags, alias): the caller hands it to the
    # write-back lane after publishing (``controller/write_back_lane.py``); None once done, else
    # why to try again.
    write_back: Callable[[], str | None] | None = None
    # The registry shows something other than the decision (a verdict tag written over, an
    # alias to put back): written back even after a pass that changed nothing.
    registry_behind: bool = False
    # When the registry created each version seen (ms): for the registration -> live metric.
    registered_at: Mapping[str, int] = field(default_factory=dict)


def _known_and_read(record: ModelRecord | None, ov: ObservedVersion) -> bool:
    known = record.versions.get(ov.version) if record else None
    return bool(known and is_read(known) and (not known.source or known.source == ov.source))


class Reconciler:
    def __init__(
        self,
        store: Store,
        registry: RegistryPort,
        environment: ServingEnvironment,
        *,
        default_policy: Policy = Policy.BACKWARD,
        default_environment_policy: EnvironmentPolicy = EnvironmentPolicy.ISOLATE,
        alias: str = "serving",
        write_back: bool = True,
        registry_controls: bool = True,
        own_writes: OwnWrites | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._alias = alias
        # Off: the registry's policy tags and hand-moved aliases steer nothing
        # (ControllerSettings.registry_controls; docs/security.md).
        self._controls = registry_controls
        # Off only where the registry is a seam that records nothing (unit tests of decisions).
        self._write_back = write_back
        self._store = store
        self._registry = registry
        # The write-back's tags and alias are remembered before they are written, so that the
        # webhooks they cause are not reconciled again (``controller.own_writes``).
        self._writer: RegistryWriter = (
            RememberingWriter(registry, own_writes) if own_writes is not None else registry
        )
        self._environment = environment
        self._default_policy = default_policy
        self._default_environment_policy = default_environment_policy
        self._clock = clock
        # The last pass over each model that found nothing to do (controller/unchanged.py).
        self._unchanged = Unchanged()

    def _allowed(self, record: ModelRecord | None, ov: ObservedVersion) -> bool:
        """Whether a version read before was read from a location still allowed: one the
        allowlist no longer has (narrowed, or read before there was one) is read again, and
        the read says whether it is quarantined (docs/security.md, "Artifact sources and
        sizes")."""
        known = record.versions.get(ov.version) if record else None
        uri = known.artifact_uri if known else None
        return (
            uri is None
            or not isinstance(self._registry, LocationPolicy)
            or (self._registry.allows(uri))
        )

    def _new_model(self, name: str, created_at: int | None) -> ModelRecord:
        return ModelRecord(
            name=name,
            policy=self._default_policy.value,
            environment_policy=self._default_environment_policy.value,
            registry_created_at=created_at,
        )

    def _tombstone(
        self, name: str, actor: str, before: ModelRecord | None, fence: Callable[[], None]
    ) -> Outcome:
        now = self._clock()

        def bury(current: ModelRecord | None) -> ModelRecord | None:
            fence()
            if current is None or current.deleted_at is not None:
                return current
            read_at = before.generation if before is not None else 0
            return replace(current, versions={}, deleted_at=now, generation=read_at)

        after = self._store.update_model(name, bury, actor)
        changed = before != after
        if changed:
            log.info("registered model %s is gone; its contract is kept for its name", name)
        return Outcome(changed=changed)

    def reconcile(
        self, name: str, actor: str = "resync", *, fence: Callable[[], None] = lambda: None
    ) -> Outcome:
        """One pass over ``name``. ``fence`` runs inside the write transaction and raises to
        stop the write (the worker's: this controller stopped leading meanwhile)."""
        # Read before the registry: the decision is written only if the model is still as
        # read here, so a newer snapshot decided meanwhile (by anyone) is never undone. The
        # stamp alone when the last pass found nothing to do: its record is loaded only if the
        # registry now says something else (``controller/unchanged.py``).
        stamp = self._store.stamp(name)
        kept = self._unchanged.same(name, stamp)
        before = None if kept is not None else self._store.load_model(name)
        try:
            info = self._registry.model(name)
            observed = self._registry.versions(name)
        except RegisteredModelGone:
            self._unchanged.forget(name)
            if kept is not None:
                before = self._as_of(name, stamp)
            return self._tombstone(name, actor, before, fence)
        reads = reads_digest(info, observed)
        if kept is not None:
            if kept.reads == reads:
                return self._outcome(name, False, None, kept.registry_behind, observed)
            before = self._as_of(name, stamp)
        read_at = before.generation if before is not None else 0
        created_at = info.created_at
        alias_now = info.aliases.get(self._alias)

        loaded = before  # as stored: what the transaction would read if nobody writes meanwhile
        if before is not None and (before.deleted_at is not None or _recreated(before, created_at)):
            log.info(
                "registered model %s was deleted and created again; its versions are new "
                "artifacts, held to the contract it had",
                name,
            )
            before = _forget_versions(before, created_at)
        to_read = [
            ov.version
            for ov in observed
            if ov.ready and not (_known_and_read(before, ov) and self._allowed(before, ov))
        ]
        facts: dict[str, ArtifactFacts] = {}
        failures: dict[str, str] = {}
        broken: dict[str, str] = {}
        details: dict[str, str] = {}
        for version in to_read:
            try:
                facts[version] = self._registry.artifact(name, version)
            except Exception as exc:
                # One version must never stop its model: what cannot be read is decided, and
                # only a temporary failure (an outage, a version deleted meanwhile) is retried.
                temporary = isinstance(exc, RegisteredModelGone | RegistryUnavailable)
                if not isinstance(exc, RegistryError):
                    log.exception("reading %s v%s failed", name, version)
                # The table is public, so its reason is from a fixed vocabulary; what the store
                # or the network said is for the log alone (controller.read_reasons).
                (failures if temporary else broken)[version] = public_reason(exc)
                details[version] = f"{type(exc).__name__}: {exc}"[:1000]
                log.warning(
                    "reading the artifacts of %s v%s failed (%s): %s", name, version,
                    "temporary" if temporary else "permanent", details[version],
                    extra={"event": "artifact_read_failed", "model": name, "version": version,
                           "reason": public_reason(exc), "detail": details[version]},
                )  # fmt: skip

        def decide(current: ModelRecord | None) -> ModelRecord:
            fence()
            return decided_from(current)

        def decided_from(current: ModelRecord | None) -> ModelRecord:
            if current is None:
                current = self._new_model(name, created_at)
            elif current.deleted_at is not None or _recreated(current, created_at):
                current = _forget_versions(current, created_at)
            elif current.registry_created_at is None:
                current = replace(current, registry_created_at=created_at)
            if before is None or _policies(current) == _policies(before):
                # Tags read before an admin change committed are stale: the reconcile that
                # change queued reads them again.
                tags = with_policy_values(info.tags, ENVIRONMENT_TAG)
                current = policies_from_tags(current, dict(tags), controls=self._controls)
            current = batching_from_tags(current, info.tags)
            current = proof_from_tags(current, info.tags, controls=self._controls)
            merged = merge_observed(current, observed, facts, failures, broken)
            now = self._clock()
            decided = decide_all(merged, now, self._environment)
            followed = follow_alias(
                decided, alias_now, now, self._environment, controls=self._controls
            )
            return replace(followed, generation=read_at)

        # Decided from a fresh read inside the write transaction, written only if nobody wrote
        # the model since ``before`` was read (else GenerationConflict: the worker requeues).
        # Each decision is logged and counted as it commits (``controller.decision_log``).
        decided = self._unwritten(name, loaded, decided_from) or self._store.update_model(
            name, decide, actor
        )
        assert decided is not None
        changed = before is None or decided != before
        # For the worker's log line: there the store's own words are fine.
        retry = "; ".join(f"v{k}: {details[k]}" for k in failures) or None
        behind = self._write_back and registry_behind(
            decided, observed, alias_now, controls=self._controls
        )
        if not changed and not to_read and stamp is not None and decided.generation == stamp[0]:
            # Nothing written, nothing read of an artifact (a version whose artifact cannot be
            # read is read again at every pass), nothing to retry: these reads decide this record.
            self._unchanged.keep(name, Kept(stamp, reads, behind))
        else:
            self._unchanged.forget(name)
        return self._outcome(name, changed, retry, behind, observed)

    def _outcome(self, name: str, changed: bool, retry: str | None, behind: bool,
                 observed: list[ObservedVersion]) -> Outcome:
        return Outcome(
            changed=changed,
            retry_reason=retry,
            write_back=functools.partial(self.write_back, name),
            registry_behind=behind,
            registered_at={o.version: o.created_at for o in observed if o.created_at},
        )

    def _unwritten(self, name: str, loaded: ModelRecord | None,
                   decide: Callable[[ModelRecord | None], ModelRecord]) -> ModelRecord | None:
        """``loaded`` when deciding it changes nothing and nobody wrote it since it was loaded
        (its stamp says so, read after the decision): the write transaction would read that
        same record, decide the same and write nothing. None: decide in the transaction."""
        if loaded is None or decide(loaded) != loaded:
            return None
        stamp = self._store.stamp(name)
        return loaded if stamp is not None and stamp[0] == loaded.generation else None

    def _as_of(self, name: str, stamp: Stamp) -> ModelRecord | None:
        """The record as ``stamp`` saw it, before the registry was read; ``GenerationConflict``
        when it was written since (the worker reads both again at once)."""
        record = self._store.load_model(name)
        read = stamp[0] if stamp is not None else 0
        stored = record.generation if record is not None and record.generation else 0
        if stored != read:
            raise GenerationConflict(name, read, stored)
        return record

    def write_back(
        self,
        name: str,
        leading: Callable[[], bool] = lambda: True,
        wanted: Callable[[], bool] = lambda: False,
    ) -> str | None:
        """Write ``name``'s latest decision back to the registry: the verdict tags and the alias
        that differ from what it has now; None once done, else why it must be tried again.

        Run by the write-back lane (``controller/write_back_lane.py``) after the decision was
        published, so it reads the store's latest record and the registry's tags and alias
        afresh: whatever was decided meanwhile is written once. Safe to repeat. Done, the model
        is marked written back at the generation read (``Store.mark_written_back``).
        ``leading`` is asked before each write: a controller that stepped down while the job
        ran writes nothing more (its successor's writes must not be undone by a stale record).
        ``wanted`` too: a pass of the model waiting, the job stops (``GaveWay``, the lane runs
        it again after the pass).
        """
        record = self._store.load_model(name)
        if record is None or record.deleted_at is not None:
            return None  # nothing is served under it: no verdict to show
        if self._write_back:
            try:
                info = self._registry.model(name)
                observed = self._registry.versions(name)
            except RegisteredModelGone:
                return None  # its webhook (or the resync) makes it a tombstone
            alias_now = info.aliases.get(self._alias)
            try:
                alias, warning, for_good = write_back(
                    Fenced(self._writer, leading, wanted), record, observed, self._alias, alias_now,
                    controls=self._controls,
                )
            except SteppedDown:
                return None  # the new leader's resync finds what is behind (its marks)
            if (alias, warning) != (record.alias_seen, record.registry_warning):
                record = self._seen(record, alias, warning)
            if record.generation is None:
                return None  # decided again meanwhile: that decision's own job writes it
            if warning is not None and for_good:
                raise RegistryRefused(warning)  # recorded above; the lane does not retry it
            if warning is not None:
                return warning
        assert record.generation is not None
        self._store.mark_written_back(name, record.generation)
        return None

    def _seen(self, record: ModelRecord, alias: str | None, warning: str | None) -> ModelRecord:
        """The alias as acknowledged and the registry's refusal, recorded on the record written
        back; returned without a generation when the model was decided again since ``record``
        was read (then only the alias is acknowledged, and nothing is marked written back)."""

        stale = False

        def seen(current: ModelRecord | None) -> ModelRecord | None:
            nonlocal stale
            if current is None:
                return None
            if current.generation != record.generation:
                # Decided again (a pin) since this job read it: the alias it wrote is what the
                # registry shows all the same, and left unacknowledged a pass would follow it
                # as a person's move. The verdict itself is the next job's (``_again``).
                stale = True
                return replace(current, alias_seen=alias)
            return replace(current, alias_seen=alias, registry_warning=warning)

        updated = self._store.update_model(record.name, seen, "registry") or record
        return replace(updated, generation=None) if stale else updated


def _policies(record: ModelRecord | None) -> tuple[str, str] | None:
    return (record.policy, record.environment_policy) if record is not None else None


def _forget_versions(record: ModelRecord, created_at: int | None) -> ModelRecord:
    # The contract and the policies belong to the name; the pin named a version of the old
    # model, so the newest version live under the contract becomes the default.
    return replace(
        record,
        versions={},
        default_version=None,
        alias_seen=None,
        registry_created_at=created_at,
        deleted_at=None,
    )


def _recreated(record: ModelRecord, created_at: int | None) -> bool:
    known = record.registry_created_at
    return known is not None and created_at is not None and known != created_at

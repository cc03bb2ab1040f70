"""A dry run of the gate: one artifact decided as the next version of a model, nothing written.

The verdict is the gate's own: the model as the next reconcile would see it (the stored record,
the registry's versions and policy tags, the settings' default policies for a model not known
yet) gets the artifact as one more version, and ``controller.decisions.decide_all`` decides it
against the contract, the compatibility and environment policies and the serving environment.
The result is read and dropped: no decision, audit event, tag or table is written (the store is
only read, the registry only asked). docs/architecture.md, "Before registering: a dry run".

A model the registry does not have (and that left no contract behind) would get the artifact as
its first version: its signature becomes the contract, so only the environment can block it.

The proof on the input example (issue 17) is made only when asked (``prove``,
``controller.dry_run_proof``): a serving replica proves the artifact where it would be served
and answers what a replica's report would say, which ``with_report`` decides again as the gate
decides a reported proof or load failure (on a copy; nothing is written either).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from controller.artifacts import ArtifactFacts
from controller.decisions import WAITING_FOR_CONTRACT, decide_all
from controller.environment import ServingEnvironment
from controller.environment_policy import with_policy_values
from controller.exceptions import (
    RegisteredModelGone,
    RegistryError,
    RegistryUnavailable,
)
from controller.own_environments import environment_of, served_from
from controller.proofs import ProofPolicy, policy, proof_of
from controller.read_reasons import public_reason
from controller.reconciler import merge_observed
from controller.records import ModelRecord, Signature, VersionRecord
from controller.registry import ObservedModel, ObservedVersion
from controller.registry_sync import ENVIRONMENT_TAG, policies_from_tags
from controller.settings import ControllerSettings
from controller.store import Store
from wire.routing_table import EnvironmentSpec, VersionState

log = logging.getLogger(__name__)

FIRST_VERSION = "would be the model's first version: its signature becomes the contract"
KEPT_CONTRACT = (
    "the registry has no model of this name now, but the name keeps the contract it had: a "
    "model registered again under it is held to it (a forced pin gives it another)"
)
NO_PROOF = (
    "not proven on its input example: the proof is not part of the dry run yet unless asked for "
    "(sigserve check --prove)"
)
PROOF_OFF = "the model's proof policy is off: the gate does not prove its versions"


class CheckRegistry(Protocol):
    """What a dry run asks the registry (``controller.registry.Registry`` answers it)."""

    def model(self, name: str) -> ObservedModel: ...

    def versions(self, name: str) -> list[ObservedVersion]: ...


@dataclass(frozen=True)
class DryRun:
    model: str
    # The version number the artifact was decided as (the registry may give another).
    version: str
    verdict: VersionState
    reasons: list[str]
    warnings: list[str]
    # What it was checked against: the model's contract, or its own signature when first.
    contract: Signature | None
    first_version: bool
    policy: str
    environment_policy: str
    # Where the artifact was read from (None: files the client sent, or not read).
    location: str | None
    notes: list[str] = field(default_factory=list)
    # What it was decided from, to decide it again with a trial's report (None: not read).
    basis: Basis | None = None
    # What the dry run's proof found (``controller.dry_run_proof``); None: not made.
    proof: dict[str, Any] | None = None


@dataclass(frozen=True)
class Basis:
    """The model as decided with the artifact as version ``version``, and what decided it."""

    decided: ModelRecord
    version: str
    now: datetime
    env: ServingEnvironment
    first: bool
    kept_contract: bool

    @property
    def candidate(self) -> VersionRecord:
        return self.decided.versions[self.version]

    def awaits_proof(self) -> bool:
        """Whether the gate would prove it before it goes live, and no proof counts yet."""
        record = self.decided
        candidate = self.candidate
        return (
            policy(record, self.env) is ProofPolicy.ON
            and candidate.state is VersionState.PENDING
            and candidate.reasons != [WAITING_FOR_CONTRACT]
            and proof_of(candidate) is None
        )

    @property
    def environment(self) -> EnvironmentSpec | None:
        """Where it would be proven and served (None: the shared serving environment)."""
        return environment_of(self.candidate)


def as_the_gate_sees_it(
    name: str,
    stored: ModelRecord | None,
    info: ObservedModel | None,
    observed: list[ObservedVersion],
    settings: ControllerSettings,
) -> ModelRecord:
    """The model as the next reconcile would hold it before deciding (``Reconciler``).

    The contract and policies belong to the name: a model deleted from the registry, or
    created again, keeps them and loses its versions, as the reconciler's tombstone does.
    """
    model = stored or ModelRecord(
        name=name,
        policy=settings.default_policy.value,
        environment_policy=settings.default_environment_policy.value,
    )
    created_at = info.created_at if info is not None else None
    known = model.registry_created_at
    if info is None or model.deleted_at is not None or (known is not None and known != created_at):
        model = replace(model, versions={}, default_version=None, deleted_at=None)
    if info is not None and settings.registry_controls:
        model = policies_from_tags(model, dict(with_policy_values(info.tags, ENVIRONMENT_TAG)))
    return model


def decide(
    model: ModelRecord,
    observed: list[ObservedVersion],
    read: ArtifactFacts | BaseException,
    now: datetime,
    env: ServingEnvironment,
) -> DryRun:
    """``read`` (the artifact's facts, or why it could not be read) decided as the version
    after every one the model has, with ``decide_all``."""
    numbers = [int(v.version) for v in observed if v.version.isdigit()]
    numbers += [v.number for v in model.versions.values()]
    version = str(max(numbers, default=0) + 1)
    candidate = ObservedVersion(version=version, status="READY", source=None)
    facts: dict[str, ArtifactFacts] = {}
    failures: dict[str, str] = {}
    broken: dict[str, str] = {}
    if isinstance(read, ArtifactFacts):
        facts[version] = read
    else:
        # The reconciler's split: what is temporary leaves the version pending, the rest
        # quarantines it; the reason is the public one (controller.read_reasons).
        temporary = isinstance(read, RegisteredModelGone | RegistryUnavailable)
        (failures if temporary else broken)[version] = public_reason(read)
    merged = merge_observed(model, [*observed, candidate], facts, failures, broken)
    decided = decide_all(merged, now, env)
    first = model.contract is None and decided.default_version == version
    basis = Basis(decided, version, now, env, first, kept_contract=False)
    return _verdict(basis, read=version in facts)


def with_report(
    result: DryRun,
    *,
    proof: dict[str, Any] | None = None,
    load_failure: dict[str, Any] | None = None,
) -> DryRun:
    """``result`` decided again as the gate decides its version once a replica reported
    ``proof`` or ``load_failure`` about it (the dicts ``VersionRecord`` keeps); on a copy."""
    basis = result.basis
    assert basis is not None, "a dry run that read no artifact has nothing to prove"
    version = basis.candidate
    if proof is not None:
        version = replace(version, proof=dict(proof))
    if load_failure is not None:
        version = replace(version, load_failure=dict(load_failure))
    record = replace(basis.decided, versions={**basis.decided.versions, basis.version: version})
    decided = decide_all(record, basis.now, basis.env)
    return replace(_verdict(replace(basis, decided=decided), read=True), proof=result.proof)


def _verdict(basis: Basis, *, read: bool) -> DryRun:
    decided, version = basis.decided, basis.version
    verdict = basis.candidate
    state, reasons = verdict.state, list(verdict.reasons)
    if state is VersionState.PENDING and read and reasons != [WAITING_FOR_CONTRACT]:
        # Read, and neither blocked nor waiting for a contract: every check a dry run makes
        # passed, and the gate waits for what it did not make (the proof on the example).
        state, reasons = VersionState.LIVE, []
    warnings = list(verdict.warnings)
    spec = environment_of(verdict)
    if spec is not None and served_from(spec) not in warnings:
        # Pending for its proof there: the dry run says where it would be served.
        warnings.append(served_from(spec))
    notes = [KEPT_CONTRACT] if basis.kept_contract else []
    if basis.first:
        notes.append(FIRST_VERSION)
    if state is VersionState.LIVE and basis.awaits_proof():
        notes.append(NO_PROOF)
    elif state is VersionState.LIVE and policy(decided, basis.env) is ProofPolicy.OFF:
        notes.append(PROOF_OFF)
    return DryRun(
        model=decided.name,
        version=version,
        verdict=state,
        reasons=reasons,
        warnings=warnings,
        contract=decided.contract,
        first_version=basis.first,
        policy=decided.policy,
        environment_policy=decided.environment_policy,
        location=verdict.artifact_uri,
        notes=notes,
        basis=basis if read else None,
    )


def check(
    name: str,
    read: Callable[[], ArtifactFacts],
    *,
    store: Store,
    registry: CheckRegistry,
    settings: ControllerSettings,
    env: ServingEnvironment,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DryRun:
    """Decide what ``read`` returns as the next version of ``name``; reads only.

    The registry's answers about the model come first, as in a reconcile; a registry that
    cannot answer them is ``RegistryUnavailable`` (a 503: nothing can be told).
    """
    stored = store.load_model(name)
    try:
        info: ObservedModel | None = registry.model(name)
        observed = registry.versions(name)
    except RegisteredModelGone:
        info, observed = None, []
    model = as_the_gate_sees_it(name, stored, info, observed, settings)
    kept = info is None and model.contract is not None
    try:
        facts: ArtifactFacts | BaseException = read()
    except RegistryError as exc:
        facts = exc
        log.info("dry run of %s: the artifact could not be read: %s: %s", name,
                 type(exc).__name__, exc)  # fmt: skip
    result = decide(model, observed, facts, clock(), env)
    if not kept:
        return result
    basis = replace(result.basis, kept_contract=True) if result.basis is not None else None
    return replace(result, notes=[KEPT_CONTRACT, *result.notes], basis=basis)

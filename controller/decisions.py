"""Deciding every version of one model: pure functions over records.

Every version is checked, the default included: against the contract (its signature, under the
model's compatibility policy) and against the serving environment (its requirements and Python,
under the model's environment policy). A version is live only when neither blocks it and, with
proofs on, a replica proved it in the environment it is assigned: the shared serving
environment, or under ``isolate`` one of its own when it needs a package the shared one lacks or
failed there (``controller.own_environments``).

A decision is remembered with the digest of what it was made against (the contract, both
policies and the serving environment). It is made again only when that digest changes or the
version's artifact does, so a restart or a repeated reconcile never flips a decision.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime
from typing import Any

from controller.compatibility import Policy, check
from controller.environment import (
    ArtifactEnvironment,
    EnvironmentPolicy,
    EnvironmentVerdict,
    ServingEnvironment,
    check_environment,
)
from controller.own_environments import (
    assign,
    building,
    counts,
    environment_digest,
    failure_text,
    served_from,
    stored,
)
from controller.proofs import (
    BEFORE_PROOFS,
    BEING_PROVEN,
    FAILED,
    GRANDFATHERED,
    NOT_EXERCISED,
    ProofPolicy,
    failed_proof_reason,
    policy,
    proof_basis,
    proof_in,
)
from controller.records import ModelRecord, Signature, VersionRecord
from wire.routing_table import VersionState

NOT_READ = "its artifact (MLmodel, requirements) has not been read yet"


def decision_basis(model: ModelRecord, env_digest: str) -> str:
    blob = json.dumps(
        {
            "contract": model.contract,
            "policy": model.policy,
            "environment_policy": model.environment_policy,
            "environment": env_digest,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def is_read(version: VersionRecord) -> bool:
    """Whether what the version is was read: signature, MLmodel digest and environment."""
    return version.signature_read and version.mlmodel_digest is not None


def _environment_verdict(
    model: ModelRecord, version: VersionRecord, env: ServingEnvironment
) -> EnvironmentVerdict:
    facts = version.environment or {}
    artifact = ArtifactEnvironment(
        requirements=facts.get("requirements"),
        python_version=facts.get("python_version"),
        pickled=bool(facts.get("pickled", False)),
    )
    return check_environment(artifact, env, EnvironmentPolicy(model.environment_policy))


def _by_hand(override: dict[str, Any]) -> str:
    return f"{override.get('actor', 'admin')} at {override.get('at', '?')}: {override['reason']}"


def load_failure_in(version: VersionRecord, digest: str | None) -> dict[str, Any] | None:
    """The version's reported load failure, if it is about the artifact the version has now,
    in environment ``digest`` (None: the shared one). Another MLmodel downloaded than the one
    checked (``artifact-mismatch``) counts wherever it was seen: no environment changes it."""
    failure = version.load_failure
    if failure is not None and failure.get("kind") == "artifact-mismatch":
        return _about_artifact(failure, version)
    return failure if counts(failure, version, digest) else None


def load_failure_of(version: VersionRecord) -> dict[str, Any] | None:
    """The version's reported load failure, if it is about the artifact the version has now,
    in the environment the version is assigned."""
    return load_failure_in(version, environment_digest(version))


def _about_artifact(report: dict[str, Any] | None, version: VersionRecord) -> dict[str, Any] | None:
    if report is None or report.get("mlmodel_digest") != version.mlmodel_digest:
        return None
    return report


def shared_failure(version: VersionRecord) -> dict[str, Any] | None:
    """What failed in the shared serving environment about the version's artifact: the report
    kept with its environment of its own, else a failed proof or a load failure from the shared
    environment. Neither a report held for the live default nor an artifact mismatch (another
    MLmodel downloaded: no environment changes that) counts."""
    kept = (version.own_environment or {}).get("shared_failure")
    if _about_artifact(kept, version) is not None:
        return kept
    proof = version.proof
    if counts(proof, version, None) and proof is not None and proof.get("outcome") == FAILED:
        found: dict[str, Any] | None = proof
    elif counts(version.load_failure, version, None):
        found = version.load_failure
    else:
        return None
    if found is None or held(found) or found.get("kind") == "artifact-mismatch":
        return None
    return found


def _could_not_load(failure: dict[str, Any]) -> str:
    where = " in its own environment" if failure.get("environment_digest") else ""
    return (
        f"serving could not load its artifact{where} (replica {failure.get('replica', '?')} at "
        f"{failure.get('at', '?')}): {failure.get('cause', '?')}; release it to try again"
    )


def held(report: dict[str, Any]) -> bool:
    """Whether a replica's report was about the model's live default, and so is kept without
    taking it out (``commands.record_load_failure``; docs/architecture.md, "A load that cannot
    pass goes back to the controller")."""
    return report.get("quarantines") is False


def _held_warning(what: str, report: dict[str, Any]) -> str:
    return (
        f"{what} (replica {report.get('replica', '?')} at {report.get('at', '?')}): "
        f"{report.get('cause', '?')}; reported while it was the live default, so it stays live "
        "(a replica's report never takes a default out): pin another version or quarantine it "
        "by hand; release it to clear the report"
    )


def decide_version(
    model: ModelRecord,
    version: VersionRecord,
    now: datetime,
    env: ServingEnvironment,
    basis: str,
) -> VersionRecord:
    if not is_read(version):
        return version  # stays pending; its reasons say why
    # Facts about the artifact, wherever they were found: where each counts is for _decide.
    failure = _about_artifact(version.load_failure, version)
    proving = proof_basis(model, version, env)
    if version.override is not None or failure is not None or proving is not None:
        # An override, a load failure or a proof is part of what the decision was made
        # against: adding or removing one decides the version again. (A version with none
        # keeps the plain basis, so decisions stored before load failures and proofs existed
        # do not change.)
        parts: list[Any] = [basis, version.override]
        if failure is not None:
            parts.append(failure)
        if proving is not None:
            parts.append({"proof": proving})
        blob = json.dumps(parts, sort_keys=True)
        basis = hashlib.sha256(blob.encode()).hexdigest()
    if version.decided_against == basis and version.state is not VersionState.PENDING:
        return version
    decided = _decide(model, version, env)
    if version.decided_against == basis and (
        decided.state,
        decided.reasons,
        decided.warnings,
        decided.own_environment,
    ) == (version.state, version.reasons, version.warnings, version.own_environment):
        return version  # still pending for its proof: not decided again at every pass
    return replace(decided, decided_against=basis, decided_at=now)


def _decide(model: ModelRecord, version: VersionRecord, env: ServingEnvironment) -> VersionRecord:
    verdict = check(model.contract, version.signature, Policy(model.policy))
    environment = _environment_verdict(model, version, env)
    # Where it is proven and served: under isolate, an environment of its own when it needs a
    # package the shared one lacks or failed there; reports count for that environment only.
    failed_shared = shared_failure(version)
    spec = None
    if EnvironmentPolicy(model.environment_policy) is EnvironmentPolicy.ISOLATE:
        spec = assign(environment, env, failed_shared)
    if spec is None:
        failed_shared = None
    where = spec.digest if spec is not None else None
    failure = load_failure_in(version, where)
    reasons = verdict.reasons + environment.blocking
    warnings = verdict.warnings + environment.warnings
    if failure is not None and held(failure):
        warnings = [_held_warning("serving could not load its artifact", failure), *warnings]
    elif failure is not None:
        reasons = [_could_not_load(failure), *reasons]
    action = (version.override or {}).get("action")
    # Asked for unless an operator decided by hand (a release serves the version as it is).
    proved = policy(model, env) is ProofPolicy.ON and action is None
    proof = proof_in(version, where) if proved else None
    if proof is not None and proof.get("outcome") == FAILED and held(proof):
        warnings = [_held_warning("failed its proof on serving", proof), *warnings]
    elif proof is not None and proof.get("outcome") == FAILED:
        reasons = [failed_proof_reason(proof), *reasons]
    if failed_shared is not None and reasons:
        # Failed in its own environment too (or blocked): both causes.
        reasons = [*reasons, f"before that, it {failure_text(failed_shared)}"]
    own = stored(spec, failed_shared)
    if action == "quarantine":
        reasons = [f"quarantined by hand by {_by_hand(version.override or {})}", *reasons]
    elif action == "release" and reasons:
        warnings = [
            f"released by hand by {_by_hand(version.override or {})}; the gate's reasons: "
            + "; ".join(reasons),
            *warnings,
        ]
        reasons = []
    if proved and not reasons:
        if proof is None:
            # Everything else passed: live once a replica has called it on its example, in the
            # environment it will be served from.
            waiting = building(spec) if spec is not None else BEING_PROVEN
            return replace(
                version,
                state=VersionState.PENDING,
                reasons=[waiting],
                warnings=warnings,
                own_environment=own,
            )
        if proof.get("outcome") == GRANDFATHERED:
            warnings = [*warnings, BEFORE_PROOFS]
        elif proof.get("outcome") != FAILED and not proof.get("exercised", True):
            warnings = [*warnings, NOT_EXERCISED]
    if spec is not None and not reasons:
        warnings = [*warnings, served_from(spec)]
    return replace(
        version,
        state=VersionState.QUARANTINED if reasons else VersionState.LIVE,
        reasons=reasons,
        warnings=warnings,
        own_environment=own,
    )


def choose_default(model: ModelRecord) -> tuple[str | None, Signature | None]:
    """Keep a default that still exists; otherwise pick one.

    A new model's first version becomes its default once its artifact is read (the first one
    that can be read, when a lower one's artifact is broken). When the pinned
    default is deleted the contract stays (clients still expect it) and the newest version that
    is live under it takes over; with none, the newest decided version stands (its 409 tells the
    contract's clients why), and with no decided version there is no default yet.
    """
    if model.default_version in model.versions:
        return model.default_version, model.contract
    ordered = model.sorted_versions()
    if model.default_version is None and model.contract is None:
        for v in ordered:
            if is_read(v):
                return v.version, v.signature
            if v.state is not VersionState.QUARANTINED:
                return None, None  # a lower version is still pending: it may set the contract
            # Quarantined without being read: its artifact cannot be read, so it sets nothing.
        return None, None
    for v in reversed(ordered):
        if v.state is VersionState.LIVE and is_read(v):
            return v.version, model.contract
    # None is live under the contract: the newest decided version stands as the default, so
    # the contract's clients get its 409 and reasons rather than a bare "no default" (the
    # registry's alias is never moved onto it: see registry_sync).
    for v in reversed(ordered):
        if is_read(v) and v.state is VersionState.QUARANTINED and v.decided_at is not None:
            return v.version, model.contract
    return None, model.contract


WAITING_FOR_CONTRACT = (
    "waiting for the model's first version to be read: its signature becomes the contract"
)


def decide_all(model: ModelRecord, now: datetime, env: ServingEnvironment) -> ModelRecord:
    default_version, contract = choose_default(model)
    model = replace(model, default_version=default_version, contract=contract)
    if default_version is None and contract is None:
        # No contract yet because the first version is still pending: judging the others now
        # would quarantine them for want of a contract, then flip them once it arrives.
        return _waiting_for_contract(model)
    basis = decision_basis(model, env.digest)
    model.versions = {
        k: decide_version(model, v, now, env, basis) for k, v in model.versions.items()
    }
    if default_version is None:
        # The default was deleted: the newest version now live under the contract takes over.
        fallback, _ = choose_default(model)
        model = replace(model, default_version=fallback)
    return model


def _waiting_for_contract(model: ModelRecord) -> ModelRecord:
    versions = {
        k: replace(v, state=VersionState.PENDING, reasons=[WAITING_FOR_CONTRACT])
        if is_read(v)
        else v
        for k, v in model.versions.items()
    }
    return replace(model, versions=versions)

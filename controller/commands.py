"""What an operator can change by hand: each is one read-decide-write transaction.

A pin moves the default and keeps the contract, so a rollback to a version that was live under
it always works; changing the contract is an explicit act (``adopt_contract``, or ``force`` for
a version that breaks it), and every version is then decided again in the same transaction.
The rule and its table: docs/architecture.md, "Pins and policy changes".

No force makes a version that cannot run here (its environment check blocks it) the default:
that is what the environment policy is for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from controller.compatibility import Policy, check
from controller.decisions import decide_all, held, is_read, load_failure_of
from controller.environment import EnvironmentPolicy, ServingEnvironment
from controller.exceptions import InvalidRequest, NotFound, PinRefused, StaleReport
from controller.proofs import FAILED, proof_of
from controller.records import ModelRecord, VersionRecord
from controller.store import Store
from wire.routing_table import VersionState

ADMIN = "admin"


def _decided_if_known(
    name: str, env: ServingEnvironment, change: Callable[[ModelRecord], ModelRecord]
) -> Callable[[ModelRecord | None], ModelRecord]:
    def apply(current: ModelRecord | None) -> ModelRecord:
        if current is None or current.deleted_at is not None:
            raise NotFound(f"registered model '{name}' is not known to sigserve")
        return decide_all(change(current), datetime.now(UTC), env)

    return apply


def _apply(
    store: Store,
    name: str,
    env: ServingEnvironment,
    change: Callable[[ModelRecord], ModelRecord],
    actor: str = ADMIN,
) -> ModelRecord:
    updated = store.update_model(name, _decided_if_known(name, env, change), actor)
    assert updated is not None
    return updated


def _pin_target(record: ModelRecord, version: str) -> VersionRecord:
    target = record.versions.get(version)
    if target is None:
        raise NotFound(f"registered model '{record.name}' has no version '{version}'")
    if not is_read(target):
        raise InvalidRequest("version", f"version {version}'s artifact has not been read yet")
    if target.signature is None:
        raise InvalidRequest(
            "version",
            f"version {version} has no signature; a default needs one (it is held to the "
            "contract, or gives the model its contract)",
        )
    return target


@dataclass(frozen=True)
class Redecided:
    """A version whose state a pin changed (adopting a contract decides every version again)."""

    version: str
    before: str
    after: str
    reasons: list[str]


@dataclass(frozen=True)
class Pinned:
    model: ModelRecord
    contract_changed: bool
    redecided: list[Redecided]


def _redecided(before: ModelRecord, after: ModelRecord) -> list[Redecided]:
    changed = []
    for v in after.sorted_versions():
        was = before.versions.get(v.version)
        if was is not None and was.state is not v.state:
            changed.append(Redecided(v.version, was.state.value, v.state.value, list(v.reasons)))
    return changed


def pin_default(
    store: Store,
    name: str,
    version: str,
    env: ServingEnvironment,
    *,
    force: bool = False,
    adopt_contract: bool = False,
    actor: str = ADMIN,
) -> Pinned:
    """Make ``version`` the default; with ``adopt_contract`` or ``force``, its signature the
    contract too. Refused (``PinRefused``) when the version breaks the contract, unless forced,
    or when it cannot be served at all (force does not change that). Audited by ``actor``: an
    operator, or ``rollout`` for a rollout's promotion (``controller.rollout_stepper``)."""
    seen: list[ModelRecord] = []

    def pin(record: ModelRecord) -> ModelRecord:
        seen[:] = [record]
        target = _pin_target(record, version)
        # A model without a contract (its first version has no signature) has no clients to
        # keep: its first pin gives it one.
        adopt = force or adopt_contract or record.contract is None
        if not force and record.contract is not None:
            verdict = check(record.contract, target.signature, Policy(record.policy))
            if not verdict.compatible:
                raise PinRefused(
                    f"version {version} breaks the contract of '{name}'; send \"force\": true "
                    "to make its signature the new contract",
                    verdict.reasons,
                )
        contract = target.signature if adopt else record.contract
        pinned = decide_all(
            replace(record, default_version=version, contract=contract),
            datetime.now(UTC),
            env,
        )
        decided = pinned.versions[version]
        if decided.state is VersionState.PENDING and not adopt:
            # Not proven yet: it goes live by itself once proven, and can be pinned then. A pin
            # that gives the model this version's contract is taken: the version could not be
            # proven under the old one, and is now (it is the default, pending, meanwhile).
            raise InvalidRequest(
                "version",
                f"version {version} is being proven (loaded and called on its input example "
                "before its first request); pin it once it is live",
            )
        if decided.state is VersionState.QUARANTINED:
            # It keeps the contract: only the environment check, a failed load on serving or
            # a quarantine by hand can still block it.
            raise PinRefused(
                f"version {version} cannot be served here (the reasons say why), so it cannot "
                "be the default; force does not change that",
                decided.reasons,
            )
        return pinned

    model = _apply(store, name, env, pin, actor)
    before = seen[0]
    return Pinned(model, model.contract != before.contract, _redecided(before, model))


def set_policies(
    store: Store,
    name: str,
    env: ServingEnvironment,
    *,
    compatibility: Policy | None = None,
    environment: EnvironmentPolicy | None = None,
) -> ModelRecord:
    def change(record: ModelRecord) -> ModelRecord:
        if compatibility is not None:
            record = replace(record, policy=compatibility.value)
        if environment is not None:
            record = replace(record, environment_policy=environment.value)
        return record

    return _apply(store, name, env, change)


def _version(record: ModelRecord, version: str) -> VersionRecord:
    target = record.versions.get(version)
    if target is None:
        raise NotFound(f"registered model '{record.name}' has no version '{version}'")
    return target


def _set_override(record: ModelRecord, version: str, override: dict[str, str] | None
                  ) -> ModelRecord:
    versions = dict(record.versions)
    versions[version] = replace(versions[version], override=override)
    return replace(record, versions=versions)


def _override(action: str, reason: str) -> dict[str, str]:
    at = datetime.now(UTC).isoformat(timespec="seconds")
    return {"action": action, "reason": reason, "actor": ADMIN, "at": at}


def quarantine(store: Store, name: str, version: str, reason: str, env: ServingEnvironment
               ) -> ModelRecord:
    """Quarantine a version by hand; it stays quarantined through every re-check."""

    def change(record: ModelRecord) -> ModelRecord:
        _version(record, version)
        return _set_override(record, version, _override("quarantine", reason))

    return _apply(store, name, env, change)


def release(store: Store, name: str, version: str, reason: str, env: ServingEnvironment
            ) -> ModelRecord:
    """Undo a quarantine by hand; or let a version the gate quarantined serve all the same.

    The second is an operator's decision against the gate: it stays until removed
    (``remove_override``), and the gate's reasons stay visible as a warning.
    """

    def change(record: ModelRecord) -> ModelRecord:
        target = _version(record, version)
        if (target.override or {}).get("action") == "quarantine":
            return _set_override(record, version, None)
        if load_failure_of(target) is not None:
            # "Try again": serving loads it on the next request and reports it again if it
            # still fails. The gate's own reasons, if any, still hold.
            versions = dict(record.versions)
            versions[version] = replace(target, load_failure=None)
            return replace(record, versions=versions)
        if (proof_of(target) or {}).get("outcome") == FAILED:
            # "Prove it again": replicas load it and call it on its example once more.
            versions = dict(record.versions)
            versions[version] = replace(target, proof=None)
            return replace(record, versions=versions)
        if target.state is not VersionState.QUARANTINED:
            raise InvalidRequest(
                "version", f"version {version} is {target.state.value}; there is nothing to release"
            )
        return _set_override(record, version, _override("release", reason))

    return _apply(store, name, env, change)


def remove_override(store: Store, name: str, version: str, env: ServingEnvironment
                    ) -> ModelRecord:
    """Hand the version back to the gate."""

    def change(record: ModelRecord) -> ModelRecord:
        _version(record, version)
        return _set_override(record, version, None)

    return _apply(store, name, env, change)


def _record_report(
    store: Store,
    name: str,
    version: str,
    report: dict[str, Any],
    env: ServingEnvironment,
    *,
    kept: Callable[[VersionRecord], dict[str, Any] | None],
    keep: Callable[[VersionRecord, dict[str, Any]], VersionRecord],
    what: str,
    takes_out: bool,
) -> ModelRecord:
    """Keep a replica's report about one artifact on its version, and decide (shared by load
    failures and proofs). A report about another artifact than the version has now is refused
    as stale; the first report about an artifact is kept, so a repeat changes nothing.

    A report that ``takes_out`` the version (a load failure, a failed proof) about the model's
    live default is kept marked ``"quarantines": false``: the version stays live with the report
    as a warning, since the serving token that sent it is readable by model code
    (docs/architecture.md, "A load that cannot pass goes back to the controller"). Such a report
    gives way to the next one once the version is no longer the live default.
    """

    def change(record: ModelRecord) -> ModelRecord:
        target = _version(record, version)
        if target.mlmodel_digest != report["mlmodel_digest"]:
            raise StaleReport(
                f"version {version} of '{name}' is no longer the artifact {what} (its MLmodel "
                f"digest is {(target.mlmodel_digest or 'unread')[:12]}, not "
                f"{report['mlmodel_digest'][:12]})"
            )
        live_default = record.default_version == version and target.state is VersionState.LIVE
        hold = takes_out and live_default
        before = kept(target)
        if before is not None and (hold or not held(before)):
            return record
        versions = dict(record.versions)
        versions[version] = keep(target, {**report, "quarantines": False} if hold else report)
        return replace(record, versions=versions)

    updated = store.update_model(
        name, _decided_if_known(name, env, change), f"serving:{report['replica']}"
    )
    assert updated is not None
    return updated


def record_load_failure(
    store: Store, name: str, version: str, failure: dict[str, str], env: ServingEnvironment
) -> ModelRecord:
    """Record that a serving replica could not load the version's artifact; it is quarantined,
    unless it is the model's live default, which stays live with the failure as a warning
    until an operator pins another version or quarantines it by hand (``_record_report``).

    ``failure`` names the artifact by its MLmodel digest: a report about another artifact than
    the version has now (an older one, still cached on a replica) is refused as stale. The first
    report about an artifact is kept; the same failure reported again changes nothing, so
    replicas may repeat a report safely.
    """
    return _record_report(
        store, name, version, failure, env,
        kept=load_failure_of, keep=lambda v, r: replace(v, load_failure=dict(r)),
        what="reported", takes_out=True,
    )  # fmt: skip


def record_proof(
    store: Store, name: str, version: str, proof: dict[str, Any], env: ServingEnvironment
) -> ModelRecord:
    """Record what a serving replica's proof of the version's artifact found, and decide.

    As ``record_load_failure``: a report about another artifact than the version has now is
    refused as stale, and the first proof of an artifact is kept (replicas race to prove the
    same version; a repeat, or a later replica's report, changes nothing). A version that no
    longer awaits its proof (an operator quarantined it meanwhile, say) still records it: the
    proof is a fact about the artifact, kept for when the version is decided again. A failed
    proof of the live default (a replica proves only versions awaiting their proof, so only a
    forged report sends one) leaves it live, as a load failure does.
    """
    return _record_report(
        store, name, version, proof, env,
        kept=proof_of, keep=lambda v, r: replace(v, proof=dict(r)), what="proven",
        takes_out=proof.get("outcome") == FAILED,
    )  # fmt: skip


def load(store: Store, name: str) -> ModelRecord:
    record = store.load_model(name)
    if record is None:
        raise NotFound(f"registered model '{name}' is not known to sigserve")
    if record.deleted_at is not None:
        raise NotFound(
            f"registered model '{name}' was deleted from the registry at "
            f"{record.deleted_at.isoformat()}; its contract is kept for when the name returns"
        )
    return record

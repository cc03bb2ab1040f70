"""Deciding every version of one model: pure functions over records.

A decision is remembered with the digest of what it was made against (the contract and the
policy). It is made again only when that digest changes or the version's signature does, so a
restart or a repeated reconcile never flips a decision.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime

from controller.compatibility import Policy, check
from controller.records import ModelRecord, Signature, VersionRecord
from sigserve.routing_table import VersionState


def decision_basis(contract: Signature | None, policy: str) -> str:
    blob = json.dumps({"contract": contract, "policy": policy}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def decide_version(model: ModelRecord, version: VersionRecord, now: datetime) -> VersionRecord:
    if not version.signature_read:
        return version  # stays pending; its reasons say why
    basis = decision_basis(model.contract, model.policy)
    if version.decided_against == basis and version.state is not VersionState.PENDING:
        return version
    if version.version == model.default_version and version.signature is not None:
        state, reasons = VersionState.LIVE, []
    else:
        verdict = check(model.contract, version.signature, Policy(model.policy))
        state = VersionState.LIVE if verdict.compatible else VersionState.QUARANTINED
        reasons = verdict.reasons
    return replace(version, state=state, reasons=reasons, decided_against=basis, decided_at=now)


def choose_default(model: ModelRecord) -> tuple[str | None, Signature | None]:
    """Keep a default that still exists; otherwise pick one.

    A new model's first version becomes its default once its signature is read. When the pinned
    default is deleted the contract stays (clients still expect it) and the newest version that
    is live under it takes over; with none, the model has no default until someone pins one.
    """
    if model.default_version in model.versions:
        return model.default_version, model.contract
    ordered = model.sorted_versions()
    if model.default_version is None and model.contract is None:
        if not ordered or not ordered[0].signature_read:
            return None, None
        first = ordered[0]
        return first.version, first.signature
    for v in reversed(ordered):
        if v.signature_read and check(model.contract, v.signature, Policy(model.policy)).compatible:
            return v.version, model.contract
    return None, model.contract


WAITING_FOR_CONTRACT = (
    "waiting for the model's first version to be read: its signature becomes the contract"
)


def decide_all(model: ModelRecord, now: datetime) -> ModelRecord:
    default_version, contract = choose_default(model)
    model = replace(model, default_version=default_version, contract=contract)
    if default_version is None and contract is None:
        # No contract yet because the first version is still pending: judging the others now
        # would quarantine them for want of a contract, then flip them once it arrives.
        return _waiting_for_contract(model)
    model.versions = {k: decide_version(model, v, now) for k, v in model.versions.items()}
    return model


def _waiting_for_contract(model: ModelRecord) -> ModelRecord:
    versions = {
        k: replace(v, state=VersionState.PENDING, reasons=[WAITING_FOR_CONTRACT])
        if v.signature_read
        else v
        for k, v in model.versions.items()
    }
    return replace(model, versions=versions)

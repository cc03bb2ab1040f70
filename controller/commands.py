"""What an operator can change by hand: each is one read-decide-write transaction.

Pinning the default version changes the model's contract, and changing a policy changes what
versions are held to; every version is then decided again in the same transaction.

A pin is refused (409, with the reasons) when the new default breaks the current contract's
clients, unless forced: a forced pin makes its signature the contract, and every other version
is judged against that. No force makes a version that cannot run here (its environment check
blocks it) the default: that is what the environment policy is for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from controller.compatibility import Policy, check
from controller.decisions import decide_all, is_read
from controller.environment import EnvironmentPolicy, ServingEnvironment
from controller.exceptions import InvalidRequest, NotFound, PinRefused
from controller.records import ModelRecord, VersionRecord
from controller.store import Store
from sigserve.routing_table import VersionState


def _existing(
    name: str, env: ServingEnvironment, change: Callable[[ModelRecord], ModelRecord]
) -> Callable[[ModelRecord | None], ModelRecord]:
    def apply(current: ModelRecord | None) -> ModelRecord:
        if current is None:
            raise NotFound(f"registered model '{name}' is not known to sigserve")
        return decide_all(change(current), datetime.now(UTC), env)

    return apply


def _pin_target(record: ModelRecord, version: str) -> VersionRecord:
    target = record.versions.get(version)
    if target is None:
        raise NotFound(f"registered model '{record.name}' has no version '{version}'")
    if not is_read(target):
        raise InvalidRequest("version", f"version {version}'s artifact has not been read yet")
    if target.signature is None:
        raise InvalidRequest(
            "version",
            f"version {version} has no signature; the default defines the contract, "
            "so it needs one",
        )
    return target


def pin_default(
    store: Store, name: str, version: str, env: ServingEnvironment, *, force: bool = False
) -> ModelRecord:
    def pin(record: ModelRecord) -> ModelRecord:
        target = _pin_target(record, version)
        if not force and record.contract is not None and version != record.default_version:
            verdict = check(record.contract, target.signature, Policy(record.policy))
            if not verdict.compatible:
                raise PinRefused(
                    f"version {version} breaks the contract of '{name}' (pinned from version "
                    f'{record.default_version}); send "force": true to make its signature '
                    "the new contract",
                    verdict.reasons,
                )
        pinned = decide_all(
            replace(record, default_version=version, contract=target.signature),
            datetime.now(UTC),
            env,
        )
        decided = pinned.versions[version]
        if decided.state is VersionState.QUARANTINED:
            # Under its own contract only the environment check can still block it.
            raise PinRefused(
                f"version {version} cannot run in the serving environment, so it cannot be "
                "the default (the model's environment policy decides; force does not)",
                decided.reasons,
            )
        return pinned

    updated = store.update_model(name, _existing(name, env, pin))
    assert updated is not None
    return updated


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

    updated = store.update_model(name, _existing(name, env, change))
    assert updated is not None
    return updated


def load(store: Store, name: str) -> ModelRecord:
    record = store.load_model(name)
    if record is None:
        raise NotFound(f"registered model '{name}' is not known to sigserve")
    return record

"""What an operator can change by hand: each is one read-decide-write transaction.

Pinning the default version changes the model's contract; every version is then decided again
against it in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from controller.compatibility import Policy
from controller.decisions import decide_all
from controller.exceptions import InvalidRequest, NotFound
from controller.records import ModelRecord
from controller.store import Store


def _existing(
    name: str, change: Callable[[ModelRecord], ModelRecord]
) -> Callable[[ModelRecord | None], ModelRecord]:
    def apply(current: ModelRecord | None) -> ModelRecord:
        if current is None:
            raise NotFound(f"registered model '{name}' is not known to sigserve")
        return decide_all(change(current), datetime.now(UTC))

    return apply


def pin_default(store: Store, name: str, version: str) -> ModelRecord:
    def pin(record: ModelRecord) -> ModelRecord:
        target = record.versions.get(version)
        if target is None:
            raise NotFound(f"registered model '{name}' has no version '{version}'")
        if not target.signature_read:
            raise InvalidRequest("version", f"version {version}'s signature has not been read yet")
        if target.signature is None:
            raise InvalidRequest(
                "version",
                f"version {version} has no signature; the default defines the contract, "
                "so it needs one",
            )
        return replace(record, default_version=version, contract=target.signature)

    updated = store.update_model(name, _existing(name, pin))
    assert updated is not None
    return updated


def set_policy(store: Store, name: str, policy: Policy) -> ModelRecord:
    updated = store.update_model(
        name, _existing(name, lambda record: replace(record, policy=policy.value))
    )
    assert updated is not None
    return updated


def load(store: Store, name: str) -> ModelRecord:
    record = store.load_model(name)
    if record is None:
        raise NotFound(f"registered model '{name}' is not known to sigserve")
    return record

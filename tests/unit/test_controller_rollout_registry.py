"""What MLflow is told of a rollout: the alias ``candidate`` while it runs, a tag with its step
and gates, the tag with the reason and the alias removed at its end; each write remembered as
the controller's own, so its webhook reconciles nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from controller.own_writes import OwnWrites, alias_set, tag_set
from controller.rollout_gates import Thresholds
from controller.rollout_registry import ALIAS, TAG, describe, registry_effects
from controller.rollout_rows import ROLLED_BACK, RolloutRecord


class Writer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.calls.append(("tag", name, version, key, value))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.calls.append(("alias", name, alias, version))

    def delete_alias(self, name: str, alias: str) -> None:
        self.calls.append(("unalias", name, alias))


NOW = datetime(2026, 12, 5, tzinfo=UTC)
R = RolloutRecord(id="r" * 32, model="m", candidate="2", default_version="1",
                  contract_digest="d", steps=[0.05, 0.5, 1.0], step=0, step_started_at=NOW,
                  hold_s=60, min_requests=10, shadow=0.2, thresholds=Thresholds(),
                  state="running", actor="admin", created_at=NOW)  # fmt: skip


def test_the_candidate_alias_lives_as_long_as_the_rollout() -> None:
    writer, memory = Writer(), OwnWrites()
    tell = registry_effects(writer, memory)
    tell(R, "started")
    assert writer.calls == [
        ("tag", "m", "2", TAG, "running: step 0 (5%), shadow 20%"),
        ("alias", "m", ALIAS, "2"),
    ]
    assert memory.consume(alias_set("m", ALIAS, "2"))  # its webhook is the controller's own
    assert memory.consume(tag_set("m", "2", TAG, describe(R)))
    stepped = replace(R, step=1, history=[{"step": 0, "gates": [
        {"gate": "errors", "outcome": "passed", "detail": ""}]}])  # fmt: skip
    assert describe(stepped) == "running: step 1 (50%), shadow 20%; step 0: errors passed"
    ended = replace(R, state=ROLLED_BACK, reason="errors: candidate 30.00% of 50")
    tell(ended, ROLLED_BACK)
    assert writer.calls[-2:] == [
        ("tag", "m", "2", TAG, "rolled-back: errors: candidate 30.00% of 50"),
        ("unalias", "m", ALIAS),
    ]

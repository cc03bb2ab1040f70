"""SIGSERVE_REGISTRY_CONTROLS=false: registry writers no longer steer serving (issue 16).

With the switch off the policy tags are ignored (the admin API's policy stands) and an alias
moved by hand is not a pin: the controller puts its own default back on it. The registry seam is
a recorder of the writes the controller makes, as MLflow would receive them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from controller.artifacts import ArtifactFacts
from controller.decisions import decide_all
from controller.environment import ArtifactEnvironment, ServingEnvironment
from controller.reconciler import merge_observed
from controller.records import ModelRecord
from controller.registry import ObservedVersion
from controller.registry_sync import (
    ENVIRONMENT_TAG,
    POLICY_TAG,
    follow_alias,
    policies_from_tags,
    write_back,
)
from wire.routing_table import VersionState

NOW = datetime(2026, 12, 5, tzinfo=UTC)
ENV = ServingEnvironment(python_version="3.11.9", distributions={"mlflow-skinny": "3.17.2"})
ALIAS = "serving"


def _signature(*inputs: str) -> dict[str, str | None]:
    return {
        "inputs": json.dumps([{"type": "string", "name": n, "required": True} for n in inputs]),
        "outputs": json.dumps([{"type": "string", "name": "out", "required": True}]),
        "params": None,
    }


def _facts(signature: dict[str, Any], digest: str) -> ArtifactFacts:
    return ArtifactFacts(
        source=f"mlflow-artifacts:/{digest[:8]}", mlmodel_digest=digest, signature=signature,
        environment=ArtifactEnvironment(requirements=[], python_version="3.11.9", pickled=False),
    )  # fmt: skip


def _model(*, pending: tuple[str, ...] = ()) -> tuple[ModelRecord, list[ObservedVersion]]:
    """Versions 1 and 2, both live under one contract (default 1), and any pending ones."""
    seen = [ObservedVersion(version=v, status="READY", source=None) for v in ("1", "2", *pending)]
    read = {"1": _facts(_signature("text"), "a" * 64), "2": _facts(_signature("text"), "b" * 64)}
    record = ModelRecord(name="m", policy="backward", environment_policy="strict")
    decided = decide_all(merge_observed(record, seen, read, {}), NOW, ENV)
    assert decided.default_version == "1"
    assert {v.version: v.state for v in decided.sorted_versions()}["2"] is VersionState.LIVE
    return decided, seen


class RecordingRegistry:
    def __init__(self) -> None:
        self.aliases: list[tuple[str, str, str]] = []

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        pass

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases.append((name, alias, version))


def test_with_controls_off_the_policy_tags_are_ignored_and_the_stored_policy_stands() -> None:
    record = ModelRecord(name="m", policy="backward", environment_policy="strict")
    tags = {POLICY_TAG: "none", ENVIRONMENT_TAG: "off"}

    kept = policies_from_tags(record, tags, controls=False)

    assert (kept.policy, kept.environment_policy) == ("backward", "strict")
    # The switch is what differs: on, the same tags are taken.
    taken = policies_from_tags(record, tags, controls=True)
    assert (taken.policy, taken.environment_policy) == ("none", "off")


def test_with_controls_off_an_alias_moved_by_hand_does_not_pin_and_is_put_back() -> None:
    record, seen = _model()

    followed = follow_alias(record, "2", NOW, ENV, controls=False)

    assert followed.default_version == "1"
    assert followed.alias_refusal is None
    registry = RecordingRegistry()
    acknowledged, warning, _ = write_back(registry, followed, seen, ALIAS, "2", controls=False)
    assert registry.aliases == [("m", ALIAS, "1")]
    assert (acknowledged, warning) == ("1", None)
    # On, the same move is a pin.
    assert follow_alias(record, "2", NOW, ENV, controls=True).default_version == "2"


def test_with_controls_off_an_alias_on_an_undecided_version_is_put_back_at_once() -> None:
    record, seen = _model(pending=("3",))
    assert record.versions["3"].state is VersionState.PENDING

    registry = RecordingRegistry()
    write_back(registry, follow_alias(record, "3", NOW, ENV, controls=False), seen, ALIAS, "3",
               controls=False)  # fmt: skip

    assert registry.aliases == [("m", ALIAS, "1")]
    # On, it waits for the decision (it may become a pin).
    waiting = RecordingRegistry()
    write_back(waiting, record, seen, ALIAS, "3", controls=True)
    assert waiting.aliases == []

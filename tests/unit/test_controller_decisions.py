"""Deciding a model's versions: defaults, contracts, and no flips on repeat."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller import commands
from controller.artifacts import ArtifactFacts
from controller.database import make_engine, migrate
from controller.decisions import decide_all as decide_all_in
from controller.decisions import decision_basis
from controller.environment import ArtifactEnvironment, ServingEnvironment
from controller.exceptions import PinRefused
from controller.reconciler import merge_observed as merge
from controller.records import ModelRecord, VersionRecord
from controller.registry import ObservedVersion
from controller.registry_sync import follow_alias
from controller.store import Store
from wire.routing_table import VersionState

NOW = datetime(2026, 11, 26, tzinfo=UTC)
ENV = ServingEnvironment(python_version="3.11.9", distributions={"mlflow-skinny": "3.17.2",
                                                                 "pandas": "3.1.1"})


def facts(signature: dict[str, Any] | None, *requirements: str,
          digest: str = "d" * 64) -> ArtifactFacts:
    return ArtifactFacts(
        source=f"mlflow-artifacts:/{digest[:8]}", mlmodel_digest=digest, signature=signature,
        environment=ArtifactEnvironment(requirements=list(requirements), python_version="3.11.9",
                                        pickled=False))


def merge_observed(model: ModelRecord, seen: list[ObservedVersion],
                   signatures: dict[str, Any], failures: dict[str, str]) -> ModelRecord:
    """The reconciler's merge, given signatures where it reads whole artifacts."""
    read = {k: v if isinstance(v, ArtifactFacts) else facts(v) for k, v in signatures.items()}
    return merge(model, seen, read, failures)


def decide_all(model: ModelRecord, now: datetime) -> ModelRecord:
    return decide_all_in(model, now, ENV)


def sig(name: str) -> dict[str, str | None]:
    return {
        "inputs": json.dumps([{"type": "string", "name": name, "required": True}]),
        "outputs": json.dumps([{"type": "string", "name": "out", "required": True}]),
        "params": None,
    }


def observed(*versions: str) -> list[ObservedVersion]:
    return [ObservedVersion(version=v, status="READY", source=None) for v in versions]


def test_first_version_becomes_default_and_others_are_checked() -> None:
    model = ModelRecord(name="m", policy="exact")
    merged = merge_observed(model, observed("1", "2", "3"),
                            {"1": sig("prompt"), "2": sig("prompt"), "3": sig("text")}, {})
    decided = decide_all(merged, NOW)
    assert decided.default_version == "1"
    assert decided.contract == sig("prompt")
    states = {k: v.state for k, v in decided.versions.items()}
    assert states == {"1": VersionState.LIVE, "2": VersionState.LIVE,
                      "3": VersionState.QUARANTINED}
    assert "'prompt'" in decided.versions["3"].reasons[0]


def test_repeating_a_decision_changes_nothing() -> None:
    model = ModelRecord(name="m", policy="exact")
    once = decide_all(merge_observed(model, observed("1", "2"),
                                     {"1": sig("a"), "2": sig("b")}, {}), NOW)
    again = decide_all(merge_observed(once, observed("1", "2"), {}, {}), datetime.now(UTC))
    assert again == once


def test_unreadable_signature_stays_pending_with_a_reason() -> None:
    model = ModelRecord(name="m", policy="exact")
    merged = merge_observed(model, observed("1"), {}, {"1": "connection refused"})
    decided = decide_all(merged, NOW)
    assert decided.default_version is None
    assert decided.versions["1"].state is VersionState.PENDING
    assert "connection refused" in decided.versions["1"].reasons[0]


def test_deleted_version_disappears_and_deleted_default_keeps_contract() -> None:
    model = ModelRecord(name="m", policy="exact")
    decided = decide_all(merge_observed(model, observed("1", "2", "3"),
                                        {"1": sig("a"), "2": sig("a"), "3": sig("b")}, {}), NOW)
    after = decide_all(merge_observed(decided, observed("2", "3"), {}, {}), NOW)
    assert set(after.versions) == {"2", "3"}
    assert after.default_version == "2"
    assert after.contract == sig("a")
    assert after.versions["3"].state is VersionState.QUARANTINED


def test_changing_the_contract_redecides() -> None:
    model = ModelRecord(name="m", policy="exact")
    decided = decide_all(merge_observed(model, observed("1", "2"),
                                        {"1": sig("a"), "2": sig("b")}, {}), NOW)
    pinned = ModelRecord(name="m", policy="exact", default_version="2", contract=sig("b"),
                         versions=decided.versions)
    redecided = decide_all(pinned, NOW)
    assert redecided.versions["2"].state is VersionState.LIVE
    assert redecided.versions["1"].state is VersionState.QUARANTINED


def test_version_record_number_orders_numerically() -> None:
    model = ModelRecord(name="m", policy="exact",
                        versions={v: VersionRecord(version=v) for v in ("10", "9", "1")})
    assert [v.version for v in model.sorted_versions()] == ["1", "9", "10"]


def test_others_wait_while_the_first_version_is_unread() -> None:
    model = ModelRecord(name="m", policy="exact")
    merged = merge_observed(model, observed("1", "2"), {"2": sig("a")}, {"1": "timeout"})
    waiting = decide_all(merged, NOW)
    assert waiting.versions["2"].state is VersionState.PENDING
    assert "first version" in waiting.versions["2"].reasons[0]
    # Once v1 is read, v2 is decided against it, and never was quarantined on the way.
    settled = decide_all(merge_observed(waiting, observed("1", "2"), {"1": sig("a")}, {}), NOW)
    assert settled.default_version == "1"
    assert settled.versions["2"].state is VersionState.LIVE


def test_a_version_whose_source_changed_is_read_and_decided_again() -> None:
    model = ModelRecord(name="m", policy="exact")
    first = [ObservedVersion("1", "READY", "models:/m-old"), ObservedVersion("2", "READY", "a")]
    decided = decide_all(merge_observed(model, first, {"1": sig("a"), "2": sig("a")}, {}), NOW)
    assert decided.versions["2"].state is VersionState.LIVE
    # The model was deleted and registered again: v2 now holds something else.
    again = [ObservedVersion("1", "READY", "models:/m-old"), ObservedVersion("2", "READY", "b")]
    unread = merge_observed(decided, again, {}, {"2": "not read yet"})
    assert unread.versions["2"].signature_read is False
    redecided = decide_all(merge_observed(decided, again, {"2": sig("b")}, {}), NOW)
    assert redecided.versions["2"].state is VersionState.QUARANTINED


def test_the_default_is_checked_too_and_the_environment_can_block_it() -> None:
    model = ModelRecord(name="m", policy="backward", environment_policy="shared")
    needy = facts(sig("a"), "mlflow==3.17.2", "sigserve-absent-package==1.0")
    decided = decide_all(merge_observed(model, observed("1", "2"),
                                        {"1": needy, "2": sig("a")}, {}), NOW)
    assert decided.default_version == "1"  # its signature is the contract all the same
    v1 = decided.versions["1"]
    assert v1.state is VersionState.QUARANTINED
    assert v1.reasons == ["requirement 'sigserve-absent-package==1.0': package "
                          "'sigserve-absent-package' is not installed in the serving "
                          "environment, and the environment policy 'shared' serves a version "
                          "in the serving environment only (under 'isolate' it would get an "
                          "environment of its own)"]
    assert decided.versions["2"].state is VersionState.LIVE


def test_a_version_quarantined_by_the_old_major_version_rule_is_decided_again() -> None:
    # Stored by a controller from before issue 17: quarantined for "another major version",
    # decided against a basis whose environment digest had no rules revision in it. The
    # environment and policies have not changed, yet the rule has: it must be decided again.
    import hashlib

    old_digest = hashlib.sha256(json.dumps(
        {"python": ENV.python_version, "distributions": sorted(ENV.distributions.items())}
    ).encode()).hexdigest()
    model = ModelRecord(name="m", policy="backward")
    merged = merge_observed(model, observed("1"), {"1": facts(sig("a"), "pandas==2.2.3")}, {})
    old_reason = ("requirement 'pandas==2.2.3': this version needs pandas ==2.2.3; the serving "
                  "environment has 3.1.1 (another major version)")
    merged = replace(merged, default_version="1", contract=sig("a"))
    merged.versions["1"] = replace(
        merged.versions["1"], state=VersionState.QUARANTINED, reasons=[old_reason],
        warnings=[], decided_at=NOW,
        decided_against=decision_basis(merged, old_digest),
    )
    decided = decide_all(merged, NOW)
    v1 = decided.versions["1"]
    assert v1.state is VersionState.LIVE
    assert v1.reasons == []
    assert "another major version" in v1.warnings[0]


def test_environment_warnings_stay_on_a_live_version_and_policy_warn_lets_it_through() -> None:
    model = ModelRecord(name="m", policy="backward")
    old_pandas = facts(sig("a"), "pandas==3.0.2")
    decided = decide_all(merge_observed(model, observed("1"), {"1": old_pandas}, {}), NOW)
    assert decided.versions["1"].state is VersionState.LIVE
    assert "pandas" in decided.versions["1"].warnings[0]
    absent = facts(sig("a"), "sigserve-absent-package==1.0")
    # ``warn``, stored before issue 17, reads as ``off``: the check quarantines nothing (the
    # proof or the load on serving decides), and lists nothing.
    warned = ModelRecord(name="m", policy="backward", environment_policy="warn")
    decided = decide_all(merge_observed(warned, observed("1"), {"1": absent}, {}), NOW)
    assert decided.versions["1"].state is VersionState.LIVE
    assert decided.versions["1"].warnings == []
    assert decided.versions["1"].own_environment is None


def test_a_changed_environment_policy_redecides() -> None:
    model = ModelRecord(name="m", policy="backward", environment_policy="shared")
    absent = facts(sig("a"), "sigserve-absent-package==1.0")
    strict = decide_all(merge_observed(model, observed("1"), {"1": absent}, {}), NOW)
    assert strict.versions["1"].state is VersionState.QUARANTINED
    relaxed = decide_all(ModelRecord(**{**strict.__dict__, "environment_policy": "off"}), NOW)
    assert relaxed.versions["1"].state is VersionState.LIVE
    assert relaxed.versions["1"].reasons == []


def test_a_new_artifact_under_the_same_number_is_decided_again() -> None:
    model = ModelRecord(name="m", policy="backward")
    first = [ObservedVersion("1", "READY", "models:/m-a"), ObservedVersion("2", "READY", "x")]
    decided = decide_all(merge_observed(model, first, {"1": sig("a"), "2": sig("a")}, {}), NOW)
    again = [ObservedVersion("1", "READY", "models:/m-a"), ObservedVersion("2", "READY", "y")]
    other = facts(sig("a"), digest="e" * 64)
    redecided = decide_all(merge_observed(decided, again, {"2": other}, {}), NOW)
    assert redecided.versions["2"].mlmodel_digest == "e" * 64
    assert redecided.versions["2"].artifact_uri == "mlflow-artifacts:/eeeeeeee"
    assert redecided.versions["2"].state is VersionState.LIVE


# Pins: a pin that is not forced moves the default and keeps the contract; only force or
# adopt_contract changes it (docs/architecture.md, "Pins and policy changes").

def signature(*inputs: tuple[str, bool]) -> dict[str, str | None]:
    return {
        "inputs": json.dumps([{"type": "string", "name": n, "required": r} for n, r in inputs]),
        "outputs": json.dumps([{"type": "string", "name": "out", "required": True}]),
        "params": None,
    }


TEXT = signature(("text", True))
TEXT_LANG = signature(("text", True), ("lang", False))  # adds an optional input


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    return Store(engine)


def stored(store: Store, policy: str, signatures: dict[str, Any]) -> ModelRecord:
    """The model as the reconciler would store it, its versions read from ``signatures``."""
    seen = observed(*signatures)

    def first(_: ModelRecord | None) -> ModelRecord:
        return decide_all(merge_observed(ModelRecord(name="m", policy=policy), seen,
                                         signatures, {}), NOW)

    record = store.update_model("m", first, "webhook:d-1")
    assert record is not None
    return record


def states(record: ModelRecord) -> dict[str, str]:
    return {k: v.state.value for k, v in sorted(record.versions.items())}


def test_a_compatible_pin_keeps_the_contract_so_a_rollback_always_works(store: Store) -> None:
    stored(store, "backward", {"1": TEXT, "2": TEXT_LANG})
    pinned = commands.pin_default(store, "m", "2", ENV).model
    assert (pinned.default_version, pinned.contract) == ("2", TEXT)
    assert states(pinned) == {"1": "live", "2": "live"}
    back = commands.pin_default(store, "m", "1", ENV)
    assert (back.model.default_version, back.model.contract) == ("1", TEXT)
    assert back.redecided == [] and not back.contract_changed
    # Serving validates requests against the table's contract: still the one clients know.
    assert store.publish().models["m"].contract == TEXT


def test_under_exact_only_force_pins_another_signature_and_then_rollback_needs_force(
    store: Store,
) -> None:
    assert states(stored(store, "exact", {"1": TEXT, "2": TEXT_LANG})) == {
        "1": "live", "2": "quarantined"}
    with pytest.raises(PinRefused) as refused:
        commands.pin_default(store, "m", "2", ENV)
    assert "input 'lang'" in refused.value.reasons[0]
    forced = commands.pin_default(store, "m", "2", ENV, force=True)
    assert (forced.model.default_version, forced.model.contract) == ("2", TEXT_LANG)
    assert forced.contract_changed
    assert [(r.version, r.before, r.after) for r in forced.redecided] == [
        ("1", "live", "quarantined"), ("2", "quarantined", "live")]
    # v1 was live under the old contract, not under this one: going back is another contract
    # change, so it takes force again.
    with pytest.raises(PinRefused):
        commands.pin_default(store, "m", "1", ENV)
    assert commands.pin_default(store, "m", "1", ENV, force=True).model.contract == TEXT


def test_adopting_a_compatible_signature_redecides_every_version_and_says_what_broke(
    store: Store,
) -> None:
    stored(store, "backward", {"1": TEXT, "2": TEXT_LANG, "3": TEXT})
    adopted = commands.pin_default(store, "m", "2", ENV, adopt_contract=True)
    assert (adopted.model.default_version, adopted.model.contract) == ("2", TEXT_LANG)
    assert adopted.contract_changed
    # Clients may now send 'lang': the versions that do not read it would refuse them.
    assert [(r.version, r.before, r.after) for r in adopted.redecided] == [
        ("1", "live", "quarantined"), ("3", "live", "quarantined")]
    assert "'lang'" in adopted.redecided[0].reasons[0]
    with pytest.raises(PinRefused):
        commands.pin_default(store, "m", "1", ENV)


def test_adopting_a_breaking_signature_is_refused_unless_forced(store: Store) -> None:
    stored(store, "backward", {"1": TEXT, "2": signature(("prompt", True))})
    with pytest.raises(PinRefused):
        commands.pin_default(store, "m", "2", ENV, adopt_contract=True)
    record = store.load_model("m")
    assert record is not None and (record.default_version, record.contract) == ("1", TEXT)


def test_a_pin_of_a_model_without_a_contract_gives_it_one(store: Store) -> None:
    # The first version had no signature, so there is no contract yet: nothing to keep.
    stored(store, "backward", {"1": None, "2": TEXT})
    pinned = commands.pin_default(store, "m", "2", ENV)
    assert (pinned.model.default_version, pinned.model.contract) == ("2", TEXT)
    assert pinned.model.versions["2"].state is VersionState.LIVE


def test_an_alias_moved_to_a_compatible_version_keeps_the_contract() -> None:
    model = decide_all(merge_observed(ModelRecord(name="m", policy="backward"),
                                      observed("1", "2"), {"1": TEXT, "2": TEXT_LANG}, {}), NOW)
    moved = follow_alias(model, "2", NOW, ENV)
    assert (moved.default_version, moved.contract) == ("2", TEXT)
    assert moved.alias_refusal is None
    back = follow_alias(replace(moved, alias_seen="2"), "1", NOW, ENV)
    assert (back.default_version, back.contract, back.alias_refusal) == ("1", TEXT, None)

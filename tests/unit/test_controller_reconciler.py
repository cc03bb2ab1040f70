"""Reconciling one model against a registry seam (a plain fake) and a real migrated store.

The registry is the seam: the fake answers what MLflow would, so identity rules (a model
deleted and created again, a version number that comes back with other contents) are tested
without a server. The integration suite runs the same paths on a real ``mlflow server``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.artifacts import ArtifactFacts
from controller.database import make_engine, migrate
from controller.environment import ArtifactEnvironment, ServingEnvironment
from controller.exceptions import RegisteredModelGone
from controller.read_reasons import NOT_ALLOWED, REFUSED, UNAVAILABLE, UNEXPECTED, UNREADABLE
from controller.reconciler import Outcome, Reconciler
from controller.registry import ObservedModel, ObservedVersion
from controller.store import Store
from wire.routing_table import VersionState

UNREADABLE_VERSION = "its artifact cannot be read, so it cannot be checked: "
ENV = ServingEnvironment(python_version="3.11.9", distributions={"mlflow-skinny": "3.17.2"})


def sig(name: str) -> dict[str, Any]:
    return {"inputs": json.dumps([{"type": "string", "name": name, "required": True}]),
            "outputs": None, "params": None}


@dataclass
class FakeRegistry:
    created_at: int = 1
    versions_: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)
    exists: bool = True

    aliases: dict[str, str] = field(default_factory=dict)
    model_tags: dict[str, str] = field(default_factory=dict)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    writes: list[tuple[str, ...]] = field(default_factory=list)

    def model(self, name: str) -> ObservedModel:
        if not self.exists:
            raise RegisteredModelGone(name)
        return ObservedModel(self.created_at, dict(self.aliases), dict(self.model_tags))

    def versions(self, name: str) -> list[ObservedVersion]:
        return [ObservedVersion(v, "READY", src, dict(self.tags.get(v, {})))
                for v, (src, _) in self.versions_.items()]

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.writes.append(("tag", version, key, value))
        self.tags.setdefault(version, {})[key] = value

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.writes.append(("alias", alias, version))
        self.aliases[alias] = version

    def artifact(self, name: str, version: str) -> ArtifactFacts:
        self.reads.append(version)
        source, signature = self.versions_[version]
        return ArtifactFacts(source=f"{source}/artifacts", mlmodel_digest=source.ljust(64, "0"),
                             signature=signature,
                             environment=ArtifactEnvironment([], "3.11.9", pickled=False))


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    return Store(engine)


class WritingBack:
    """A reconciler whose registry write-back runs right after each pass, as the worker runs it
    (after publishing)."""

    def __init__(self, store: Store, registry: FakeRegistry) -> None:
        self._reconciler = Reconciler(store, registry, ENV)

    def reconcile(self, name: str, actor: str = "resync") -> Outcome:
        outcome = self._reconciler.reconcile(name, actor)
        if outcome.write_back is not None:
            outcome.write_back()
        return outcome


def reconciler(store: Store, registry: FakeRegistry) -> WritingBack:
    return WritingBack(store, registry)


def test_a_model_created_again_keeps_its_contract_and_every_version_is_read_again(
    store: Store,
) -> None:
    registry = FakeRegistry(created_at=100, versions_={"1": ("models:/m-a", sig("prompt"))})
    reconciler(store, registry).reconcile("m")
    # Deleted and registered again between two passes: the same number, the same registry
    # source string even (the worst case), another artifact that reads another input.
    registry.created_at = 200
    registry.versions_ = {"1": ("models:/m-a", sig("text"))}
    reconciler(store, registry).reconcile("m")
    after = store.load_model("m")
    assert after is not None
    assert after.registry_created_at == 200
    assert after.contract == sig("prompt")
    # The old pin named the old model's version; nothing is live under the contract, so the
    # newest decided version stands as the default and answers 409 with its reasons.
    assert after.default_version == "1"
    v1 = after.versions["1"]
    assert v1.state is VersionState.QUARANTINED
    assert v1.reasons[0].startswith("input 'prompt' (string, required) is missing")
    assert registry.reads == ["1", "1"]


def test_a_version_number_reused_under_the_same_model_is_checked_against_the_contract(
    store: Store,
) -> None:
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt")),
                                       "2": ("models:/m-b", sig("prompt"))})
    reconciler(store, registry).reconcile("m")
    registry.versions_["2"] = ("models:/m-c", sig("text"))
    reconciler(store, registry).reconcile("m")
    after = store.load_model("m")
    assert after is not None
    assert after.versions["2"].state is VersionState.QUARANTINED
    assert after.versions["2"].mlmodel_digest == "models:/m-c".ljust(64, "0")
    assert registry.reads == ["1", "2", "2"]


def test_repeating_reads_nothing_and_changes_nothing(store: Store) -> None:
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt"))})
    first = reconciler(store, registry).reconcile("m")
    again = reconciler(store, registry).reconcile("m")
    assert first.changed and not again.changed
    assert registry.reads == ["1"]


def test_a_deleted_model_is_a_tombstone_that_keeps_its_contract_for_its_name(
    store: Store,
) -> None:
    registry = FakeRegistry(created_at=100, versions_={"1": ("models:/m-a", sig("prompt"))})
    reconciler(store, registry).reconcile("m")
    registry.exists = False
    assert reconciler(store, registry).reconcile("m").changed
    assert not reconciler(store, registry).reconcile("m").changed  # safe to repeat
    tomb = store.load_model("m")
    assert tomb is not None and tomb.deleted_at is not None and tomb.versions == {}
    assert store.publish().models == {}  # not served
    # The name comes back (the controller saw the gap this time) with a breaking version.
    registry.exists, registry.created_at = True, 300
    registry.versions_ = {"1": ("models:/m-b", sig("text"))}
    reconciler(store, registry).reconcile("m", "webhook:d-1")
    back = store.load_model("m")
    assert back is not None and back.deleted_at is None
    assert back.contract == sig("prompt")
    assert back.versions["1"].state is VersionState.QUARANTINED
    kinds = [(e.kind, e.actor) for e in store.events("m", limit=10)]
    assert kinds[0] == ("decision", "webhook:d-1")
    assert ("model", "resync") in kinds


def test_the_verdict_is_written_back_as_tags_once_and_the_default_gets_the_alias(
    store: Store,
) -> None:
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt")),
                                       "2": ("models:/m-b", sig("text"))})
    reconciler(store, registry).reconcile("m")
    assert registry.tags["1"]["sigserve.state"] == "live"
    assert registry.tags["2"]["sigserve.state"] == "quarantined"
    assert registry.tags["2"]["sigserve.reasons"].startswith("input 'prompt' (string, required)")
    assert registry.tags["2"]["sigserve.decided_at"].endswith("+00:00")
    assert registry.aliases == {"serving": "1"}
    writes = len(registry.writes)
    # The webhooks those writes cause come back: nothing more is written (no loop).
    for _ in range(3):
        reconciler(store, registry).reconcile("m", "webhook:tag")
    assert len(registry.writes) == writes


def test_an_alias_moved_to_a_live_version_is_a_pin_to_a_quarantined_one_refused(
    store: Store,
) -> None:
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt")),
                                       "2": ("models:/m-b", sig("prompt")),
                                       "3": ("models:/m-c", sig("text"))})
    reconciler(store, registry).reconcile("m")
    registry.aliases["serving"] = "2"  # a person, in the MLflow UI
    reconciler(store, registry).reconcile("m", "webhook:alias-2")
    record = store.load_model("m")
    assert record is not None and record.default_version == "2"
    registry.aliases["serving"] = "3"
    reconciler(store, registry).reconcile("m", "webhook:alias-3")
    record = store.load_model("m")
    assert record is not None and record.default_version == "2"
    assert record.alias_refusal is not None and record.alias_refusal["version"] == "3"
    assert record.alias_refusal["reasons"][0].startswith("input 'prompt' (string, required)")
    assert registry.aliases["serving"] == "2"  # put back where the default is
    events = store.events("m", limit=20)
    assert [(e.kind, e.actor) for e in events[:1]] == [("alias", "webhook:alias-3")]
    assert any(e.kind == "pin" and e.actor == "webhook:alias-2" for e in events)


def test_a_write_back_owed_from_before_a_persons_alias_move_never_undoes_the_next_move(
    store: Store,
) -> None:
    """A person moves the alias to 2 (taken), then to 1 before the write-back owed for the
    first move has read the registry: that late write-back must not put the alias back on 2,
    and the second move's pass makes 1 the default (the race the integration test
    test_alias_moves_pin_tags_show_the_verdict_and_nothing_loops met under load)."""
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt")),
                                       "2": ("models:/m-b", sig("prompt"))})
    r = Reconciler(store, registry, ENV)
    r.reconcile("m")
    assert r.write_back("m") is None and registry.aliases == {"serving": "1"}
    registry.aliases["serving"] = "2"  # a person
    r.reconcile("m", "webhook:alias-2")
    registry.aliases["serving"] = "1"  # the same person, before the write-back below ran
    r.write_back("m")
    assert registry.aliases["serving"] == "1"
    r.reconcile("m", "webhook:alias-1")
    record = store.load_model("m")
    assert record is not None and record.default_version == "1"


def test_an_admin_pin_moves_the_alias_instead_of_being_undone_by_it(store: Store) -> None:
    from controller import commands

    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt")),
                                       "2": ("models:/m-b", sig("prompt"))})
    reconciler(store, registry).reconcile("m")
    commands.pin_default(store, "m", "2", ENV)
    reconciler(store, registry).reconcile("m", "admin")
    record = store.load_model("m")
    assert record is not None and record.default_version == "2"
    assert registry.aliases["serving"] == "2"


def test_policy_tags_in_the_registry_win(store: Store) -> None:
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt")),
                                       "2": ("models:/m-b", sig("text"))})
    reconciler(store, registry).reconcile("m")
    # ``warn``, a value from before issue 17, is taken as what it means now.
    registry.model_tags = {"sigserve.compatibility": "none", "sigserve.environment": "warn"}
    reconciler(store, registry).reconcile("m")
    record = store.load_model("m")
    assert record is not None
    assert (record.policy, record.environment_policy) == ("none", "off")
    assert record.versions["2"].state is VersionState.LIVE
    registry.model_tags = {"sigserve.compatibility": "sideways"}  # ignored, logged
    reconciler(store, registry).reconcile("m")
    assert store.load_model("m").policy == "none"  # type: ignore[union-attr]


def test_the_batching_tags_reach_the_routing_table(store: Store) -> None:
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt"))})
    reconciler(store, registry).reconcile("m")
    assert store.publish().models["m"].max_batch_size is None
    registry.model_tags = {"sigserve.max_batch_size": "8", "sigserve.batch_wait_ms": "2.5"}
    reconciler(store, registry).reconcile("m")
    entry = store.publish().models["m"]
    assert (entry.max_batch_size, entry.batch_wait_ms) == (8, 2.5)
    for size, wait in (("0", "-1"), ("-3", "nan"), ("eight", "soon")):  # ignored, logged
        registry.model_tags = {"sigserve.max_batch_size": size, "sigserve.batch_wait_ms": wait}
        reconciler(store, registry).reconcile("m")
        entry = store.publish().models["m"]
        assert (entry.max_batch_size, entry.batch_wait_ms) == (None, None)


def test_a_registry_that_refuses_the_writes_is_a_recorded_warning_not_a_lost_decision(
    store: Store,
) -> None:
    from controller.exceptions import RegistryUnavailable

    class Refusing(FakeRegistry):
        def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
            raise RegistryUnavailable("MlflowException: PERMISSION_DENIED")

    registry = Refusing(versions_={"1": ("models:/m-a", sig("prompt"))})
    reconciler(store, registry).reconcile("m")
    record = store.load_model("m")
    assert record is not None and record.versions["1"].state is VersionState.LIVE
    assert record.registry_warning is not None and "PERMISSION_DENIED" in record.registry_warning
    assert store.events("m", limit=1)[0].kind == "registry"
    # Once the registry takes the writes again, the warning goes.
    reconciler(store, FakeRegistry(versions_=registry.versions_)).reconcile("m")
    assert store.load_model("m").registry_warning is None  # type: ignore[union-attr]


def test_one_unreadable_version_is_quarantined_and_the_rest_goes_on(
    store: Store,
) -> None:
    from controller.exceptions import RegistryRefused, VersionUnreadable

    class Partly(FakeRegistry):
        def artifact(self, name: str, version: str) -> ArtifactFacts:
            if version == "2":
                raise VersionUnreadable("its MLmodel cannot be read (YAMLError: bad indent)")
            if version == "3":
                raise RegistryRefused("PERMISSION_DENIED: no read on this artifact")
            if version == "4":
                raise KeyError("flavors")  # a bug in reading must not stop the model
            return super().artifact(name, version)

    registry = Partly(versions_={v: (f"models:/m-{v}", sig("prompt")) for v in "12345"})
    outcome = reconciler(store, registry).reconcile("m")
    record = store.load_model("m")
    assert record is not None
    states = {k: (v.state.value, v.reasons[:1]) for k, v in record.versions.items()}
    assert states["1"] == ("live", []) and states["5"] == ("live", [])
    assert states["2"] == ("quarantined", [f"{UNREADABLE_VERSION}{UNREADABLE}"])
    assert states["3"] == ("quarantined", [f"{UNREADABLE_VERSION}{REFUSED} (PERMISSION_DENIED)"])
    assert states["4"] == ("quarantined", [f"{UNREADABLE_VERSION}{UNEXPECTED}"])
    assert outcome.retry_reason is None  # permanent: no backoff retries


def test_the_public_reasons_say_nothing_of_the_network_and_the_log_keeps_the_cause(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    from controller.artifact_sources import SourceNotAllowed
    from controller.exceptions import RegistryRefused, RegistryUnavailable
    from controller.table_builder import build_table

    # What a failed fetch says (a port scan's answer, a bucket, a temporary path) and where.
    causes = {
        "2": RegistryUnavailable("ConnectionError: HTTPConnectionPool(host='10.0.0.5', "
                                 "port=22): Max retries exceeded (Connection refused)"),
        "3": RegistryRefused("PERMISSION_DENIED: bob may not read s3://secret-bucket/x"),
        "4": KeyError("flavors in /tmp/tmpab12cd/MLmodel"),
        "5": SourceNotAllowed("s3://secret-bucket/model", "under none of the allowed prefixes"),
    }
    leaks = ("10.0.0.5", "secret-bucket", "/tmp/tmpab12cd")

    class Failing(FakeRegistry):
        def artifact(self, name: str, version: str) -> ArtifactFacts:
            if version in causes:
                raise causes[version]
            return super().artifact(name, version)

    registry = Failing(versions_={v: (f"models:/m-{v}", sig("prompt")) for v in "12345"})
    with caplog.at_level("WARNING", logger="controller.reconciler"):
        outcome = reconciler(store, registry).reconcile("m")
    record = store.load_model("m")
    assert record is not None
    reasons = {k: (v.state.value, v.reasons) for k, v in record.versions.items()}
    assert reasons["2"] == ("pending", [f"its artifact could not be read yet ({UNAVAILABLE}); "
                                        "retrying"])
    assert reasons["3"] == ("quarantined", [f"{UNREADABLE_VERSION}{REFUSED} (PERMISSION_DENIED)"])
    assert reasons["4"] == ("quarantined", [f"{UNREADABLE_VERSION}{UNEXPECTED}"])
    assert reasons["5"] == ("quarantined", [f"{UNREADABLE_VERSION}{NOT_ALLOWED}"])
    # The routing table (every serving client reads its reasons in a 409) says none of it.
    public = build_table([record], 1, "e").model_dump_json()
    assert not [s for s in leaks if s in public]
    # The controller's log and the worker's retry line keep every cause.
    assert all(s in caplog.text for s in leaks)
    assert outcome.retry_reason is not None and "10.0.0.5" in outcome.retry_reason


def test_an_alias_on_a_version_released_by_hand_is_refused_and_one_not_decided_waits(
    store: Store,
) -> None:
    from controller import commands

    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt")),
                                       "2": ("models:/m-b", sig("text"))})
    reconciler(store, registry).reconcile("m")
    commands.release(store, "m", "2", "clients of v2 asked for it by number", ENV)
    registry.aliases["serving"] = "2"
    reconciler(store, registry).reconcile("m", "webhook:a")
    record = store.load_model("m")
    assert record is not None and record.default_version == "1"  # the contract holds
    assert record.alias_refusal is not None
    assert record.alias_refusal["reasons"][0].startswith("input 'prompt' (string, required)")
    # An alias set on a version still being registered waits for its decision.
    registry.versions_["3"] = ("models:/m-c", sig("prompt"))
    registry.aliases["serving"] = "3"

    class Registering(FakeRegistry):
        def versions(self, name: str) -> list[ObservedVersion]:
            return [ObservedVersion(v.version, "PENDING_REGISTRATION" if v.version == "3"
                                    else v.status, v.source, v.tags)
                    for v in super().versions(name)]

    pending = Registering(**{k: getattr(registry, k) for k in
                             ("created_at", "versions_", "aliases", "tags", "writes")})
    reconciler(store, pending).reconcile("m", "webhook:b")
    assert pending.aliases["serving"] == "3"  # not moved back
    reconciler(store, registry).reconcile("m", "webhook:c")
    record = store.load_model("m")
    assert record is not None and record.default_version == "3"


def test_a_broken_first_version_does_not_stall_its_model(store: Store) -> None:
    from controller.exceptions import VersionUnreadable

    class Broken(FakeRegistry):
        def artifact(self, name: str, version: str) -> ArtifactFacts:
            if version == "1":
                raise VersionUnreadable("its MLmodel cannot be read")
            return super().artifact(name, version)

    registry = Broken(versions_={"1": ("models:/m-a", sig("prompt")),
                                 "2": ("models:/m-b", sig("prompt"))})
    reconciler(store, registry).reconcile("m")
    record = store.load_model("m")
    assert record is not None
    assert record.default_version == "2" and record.contract == sig("prompt")
    assert record.versions["2"].state is VersionState.LIVE


def test_a_recreated_model_does_not_keep_the_old_pin_on_a_breaking_version(store: Store) -> None:
    registry = FakeRegistry(created_at=1, versions_={v: (f"models:/old-{v}", sig("prompt"))
                                                     for v in "123"})
    reconciler(store, registry).reconcile("m")
    from controller import commands

    commands.pin_default(store, "m", "3", ENV)
    registry.created_at, registry.aliases = 2, {}  # MLflow deletes a model's aliases with it
    registry.versions_ = {"1": ("models:/new-1", sig("prompt")),
                          "2": ("models:/new-2", sig("prompt")),
                          "3": ("models:/new-3", sig("text"))}
    reconciler(store, registry).reconcile("m")
    record = store.load_model("m")
    assert record is not None and record.default_version == "2"
    assert registry.aliases["serving"] == "2"  # never the quarantined v3
    kinds = [e.kind for e in store.events("m", limit=50)]
    registry.exists = False
    reconciler(store, registry).reconcile("m")
    buried = [e for e in store.events("m", limit=10) if e.kind == "model"]
    assert buried and buried[0].after == {"deleted": True} and "model" in kinds


def test_a_version_read_from_a_location_no_longer_allowed_is_read_again_and_quarantined(
    store: Store,
) -> None:
    from controller.artifact_sources import ArtifactSources
    from controller.table_builder import build_table

    class Allowlisted(FakeRegistry):
        """The real allowlist in front of the fake's artifacts (``Registry`` does the same)."""

        sources = ArtifactSources(["s3://old-bucket", "s3://models"])

        def allows(self, location: str) -> bool:
            try:
                self.sources.check(location)
            except SourceNotAllowed:
                return False
            return True

        def artifact(self, name: str, version: str) -> ArtifactFacts:
            facts = super().artifact(name, version)
            self.sources.check(facts.source)
            return facts

    from controller.artifact_sources import SourceNotAllowed

    registry = Allowlisted(versions_={"1": ("s3://old-bucket/m-1", sig("prompt")),
                                      "2": ("s3://models/m-2", sig("prompt"))})
    reconciler(store, registry).reconcile("m")
    record = store.load_model("m")
    assert record is not None and record.versions["2"].state is VersionState.LIVE
    assert record.versions["1"].state is VersionState.LIVE
    registry.reads.clear()
    # The operator narrows the allowlist (or upgrades from a controller that had none).
    registry.sources = ArtifactSources(["s3://models"])
    reconciler(store, registry).reconcile("m")
    assert registry.reads == ["1"]  # v2's location is still allowed: not read again
    record = store.load_model("m")
    assert record is not None
    v1 = record.versions["1"]
    assert (v1.state, v1.reasons) == (VersionState.QUARANTINED, [f"{UNREADABLE_VERSION}"
                                                                  f"{NOT_ALLOWED}"])
    assert v1.artifact_uri is None and v1.mlmodel_digest is None
    # Serving is told of no artifact for it; the pinned default stays pinned (moving it is a
    # person's act), so its clients get the 409 with this reason, not the old artifact.
    entry = build_table([record], 1, "e").models["m"]
    assert entry.default_version == "1" and entry.versions["1"].source is None
    assert entry.versions["1"].state is VersionState.QUARANTINED
    reconciler(store, registry).reconcile("m")  # a repeat changes nothing
    assert store.load_model("m") == record

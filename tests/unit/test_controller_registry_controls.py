"""The reconciler with registry controls off (SIGSERVE_REGISTRY_CONTROLS=false), and the
``sigserve.proof`` tag as the reconciler reads it: what registry writers can steer."""

from __future__ import annotations

from controller.proofs import BEING_PROVEN
from controller.reconciler import Reconciler
from controller.store import Store
from tests.unit.test_controller_reconciler import ENV, FakeRegistry, sig, store
from wire.routing_table import VersionState

__all__ = ["store"]  # the fixture, used by name


def reconcile(
    store: Store, registry: FakeRegistry, *, controls: bool, actor: str = "resync"
) -> None:
    outcome = Reconciler(store, registry, ENV, registry_controls=controls).reconcile("m", actor)
    if outcome.write_back is not None:
        outcome.write_back()


def two_versions() -> FakeRegistry:
    return FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt")),
                                   "2": ("models:/m-b", sig("text"))})


def test_with_controls_off_a_policy_tag_loosens_nothing(store: Store) -> None:
    registry = two_versions()
    registry.model_tags = {"sigserve.compatibility": "none", "sigserve.environment": "off"}
    reconcile(store, registry, controls=False)
    record = store.load_model("m")
    assert record is not None
    assert (record.policy, record.environment_policy) == ("backward", "isolate")
    assert record.versions["2"].state is VersionState.QUARANTINED


def test_with_controls_off_an_alias_moved_by_hand_is_no_pin_and_is_put_back(
    store: Store,
) -> None:
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt")),
                                       "2": ("models:/m-b", sig("prompt"))})
    reconcile(store, registry, controls=False)
    registry.aliases["serving"] = "2"  # a registry writer, in the MLflow UI
    reconcile(store, registry, controls=False, actor="webhook:alias-2")
    record = store.load_model("m")
    assert record is not None and record.default_version == "1"
    assert record.alias_refusal is None
    assert registry.aliases["serving"] == "1"


def test_with_controls_on_the_same_alias_move_pins(store: Store) -> None:
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt")),
                                       "2": ("models:/m-b", sig("prompt"))})
    reconcile(store, registry, controls=True)
    registry.aliases["serving"] = "2"
    reconcile(store, registry, controls=True, actor="webhook:alias-2")
    record = store.load_model("m")
    assert record is not None and record.default_version == "2"


def test_the_proof_tag_is_read_by_the_reconciler(store: Store) -> None:
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt"))})
    registry.model_tags = {"sigserve.proof": "on"}
    reconcile(store, registry, controls=True)
    record = store.load_model("m")
    assert record is not None and record.proof_policy == "on"
    assert record.versions["1"].state is VersionState.PENDING
    assert record.versions["1"].reasons == [BEING_PROVEN]
    registry.model_tags = {"sigserve.proof": "off"}
    reconcile(store, registry, controls=True)
    record = store.load_model("m")
    assert record is not None and record.versions["1"].state is VersionState.LIVE


def test_with_controls_off_the_proof_tag_is_ignored(store: Store) -> None:
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt"))})
    registry.model_tags = {"sigserve.proof": "on"}
    reconcile(store, registry, controls=False)
    record = store.load_model("m")
    assert record is not None and record.proof_policy is None

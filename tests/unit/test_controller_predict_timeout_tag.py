"""The model tag ``sigserve.predict_timeout_s`` reaches the routing table (issue 15): read at a
reconcile, stored (migration 0010), published; an invalid value is ignored and logged."""

from __future__ import annotations

from controller.store import Store
from tests.unit.test_controller_reconciler import FakeRegistry, reconciler, sig, store

__all__ = ["store"]  # the fixture, shared with the reconciler's tests


def test_the_predict_timeout_tag_reaches_the_routing_table(store: Store) -> None:
    registry = FakeRegistry(versions_={"1": ("models:/m-a", sig("prompt"))})
    reconciler(store, registry).reconcile("m")
    assert store.publish().models["m"].predict_timeout_s is None  # serving's default
    registry.model_tags = {"sigserve.predict_timeout_s": "2.5"}
    reconciler(store, registry).reconcile("m")
    assert store.publish().models["m"].predict_timeout_s == 2.5
    for wrong in ("0", "-1", "nan", "soon"):  # ignored, logged: serving's default again
        registry.model_tags = {"sigserve.predict_timeout_s": wrong}
        reconciler(store, registry).reconcile("m")
        assert store.publish().models["m"].predict_timeout_s is None

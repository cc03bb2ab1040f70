"""The routing table carries each version's environment of its own (controller.table_builder),
which is what a replica builds, proves and serves it in (wire.routing_table.EnvironmentSpec)."""

from __future__ import annotations

from controller.own_environments import environment_of
from controller.store import Store
from tests.unit.test_controller_own_environments import store, version  # noqa: F401


def test_the_published_table_gives_each_version_its_environment(store: Store) -> None:  # noqa: F811
    table = store.publish().models["m"].versions
    assert table["1"].environment is None  # every need met: the shared environment
    two, three = table["2"].environment, table["3"].environment
    assert two is not None and three is not None
    assert two == environment_of(version(store, "2"))
    assert (two.kind, two.requirements) == ("layered", ["tiny-pkg==0.3.1"])
    assert three.digest == two.digest  # the same needs: one environment, built once

"""Rollouts by the model tag ``sigserve.rollout``: the tag's grammar, which versions of a new
table count as new, and the stepper starting a rollout of each once (on a real store)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller.app import build_services
from controller.reconciler import Reconciler
from controller.rollout_auto import NewVersions, PolicyError, parse_policy
from controller.rollout_rows import ABORTED
from controller.rollout_stepper import RolloutStepper
from tests.unit.test_controller_audit_and_overrides import ENV, Registry, sig
from tests.unit.test_controller_http import _settings
from tests.unit.test_controller_rollout_stepper import Harness
from wire.routing_table import ModelEntry, Rollout, RoutingTable, VersionEntry, VersionState


def test_the_tag_reads_as_the_cli_writes_it() -> None:
    spec = parse_policy("canary=10,100 step=2m shadow=20% min-requests=7")
    assert spec is not None
    assert (spec.steps, spec.hold_s, spec.shadow, spec.min_requests) == ([0.1, 1.0], 120, 0.2, 7)
    defaults = parse_policy("step=10m")
    assert defaults is not None and defaults.steps == [0.05, 0.25, 0.5, 1.0]
    assert parse_policy("off") is None and parse_policy("  ") is None
    strict = parse_policy("max-error-increase=0.002 min_agreement=0.999")
    assert strict is not None and strict.thresholds.max_error_increase == 0.002
    assert strict.thresholds.min_agreement == 0.999
    for bad, said in (("canary=50,25", "steps"), ("step=soon", "step"), ("speed=1", "unknown"),
                      ("canary", "key=value"), ("shadow=200%", "shadow"),
                      ("max-p99-ratio=0.5", "thresholds.max_p99_ratio")):  # fmt: skip
        with pytest.raises(PolicyError, match=said):
            parse_policy(bad)


def table(revision: int, versions: dict[str, VersionState], default: str = "1",
          rollout: Rollout | None = None) -> RoutingTable:  # fmt: skip
    entries = {v: VersionEntry(version=v, state=s) for v, s in versions.items()}
    model = ModelEntry(name="m", default_version=default, versions=entries, rollout=rollout)
    return RoutingTable(revision=revision, epoch="e", models={"m": model})


def test_a_version_is_new_when_it_goes_live_above_the_default() -> None:
    seen = NewVersions()
    live, pending = VersionState.LIVE, VersionState.PENDING
    seen.observe(table(1, {"1": live, "2": live, "3": pending}))
    assert seen.take() == []  # the first table is the baseline
    seen.observe(table(2, {"0": live, "1": live, "2": live, "3": live, "4": pending}))
    assert seen.take() == [("m", "3")]  # 0 is below the default, 2 was live already
    running = Rollout(id="x", candidate="3", weight=0.1)
    seen.observe(table(3, {"1": live, "3": live, "5": live}, rollout=running))
    assert seen.take() == []  # a model under a rollout waits for it


def stepper_with_tag(h: Harness, tag: str) -> RolloutStepper:
    async def publish(name: str, why: str) -> bool:
        h.published.append(f"{name}:{why}")
        return True

    return RolloutStepper(
        h.rollouts, h.store, ENV, h.metrics, publish=publish, clock=h.clock,
        new_versions=NewVersions(), read_tags=lambda name: {"sigserve.rollout": tag},
    )  # fmt: skip


def offer(stepper: RolloutStepper, version: str) -> list[str]:
    assert stepper.new_versions is not None
    stepper.new_versions.observe(table(1, {"1": VersionState.LIVE}))
    stepper.new_versions.observe(table(2, {"1": VersionState.LIVE, version: VersionState.LIVE}))
    return asyncio.run(stepper.tick())


def test_the_tag_rolls_out_each_new_version_once(database_url: str) -> None:
    h = Harness(database_url)
    stepper = stepper_with_tag(h, "canary=10,100 step=5m")
    assert offer(stepper, "2") == ["m: started 2 by tag"]
    r = h.rollouts.latest("m")
    assert r is not None and (r.candidate, r.actor, r.steps, r.hold_s) == (
        "2",
        "tag",
        [0.1, 1.0],
        300,
    )
    assert h.published == ["m:tag"]
    h.rollouts.end(r, ABORTED, "by-hand: no", "admin")
    assert offer(stepper, "2") == []  # once: an ended rollout of it is not started again
    Reconciler(h.store, Registry({"1": sig("p"), "2": sig("p"), "3": sig("p")}), ENV,
               write_back=False).reconcile("m", "resync")  # fmt: skip
    assert offer(stepper, "3") == ["m: started 3 by tag"]


def test_no_tag_or_a_bad_one_rolls_out_nothing(database_url: str) -> None:
    h = Harness(database_url)
    for tag in ("off", "canary=100,5"):
        assert offer(stepper_with_tag(h, tag), "2") == []
    assert h.rollouts.latest("m") is None


@pytest.mark.parametrize("controls", [True, False])
def test_with_registry_controls_off_the_tag_steers_nothing(tmp_path: Path, controls: bool) -> None:
    settings = _settings(tmp_path, registry_controls=controls)
    svc = build_services(settings)
    try:
        assert svc.rollout_stepper.reads_tags is controls
    finally:
        svc.engine.dispose()

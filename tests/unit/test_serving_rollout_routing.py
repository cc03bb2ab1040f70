"""A rollout's routing (serving.rollout_routing), decided from the routing table alone."""

from __future__ import annotations

import random

import pytest

from serving.rollout_routing import ROUTING_KEY_HEADER, choose, key_point
from wire.routing_table import ModelEntry, Rollout, RoutingTable, VersionEntry, VersionState

DRAWS = 2_000


def live(version: str, **fields: object) -> VersionEntry:
    bound = {"source": f"models:/m-{version}", "mlmodel_digest": version * 64}
    return VersionEntry(version=version, state=VersionState.LIVE, **{**bound, **fields})  # type: ignore[arg-type]


def table(
    weight: float, candidate: VersionEntry | None = None, rollout_id: str = "r1"
) -> RoutingTable:
    candidate = candidate if candidate is not None else live("2")
    return RoutingTable(
        revision=1,
        models={
            "m": ModelEntry(
                name="m",
                default_version="1",
                versions={"1": live("1"), candidate.version: candidate},
                rollout=Rollout(id=rollout_id, candidate=candidate.version, weight=weight),
            )
        },
    )


def share(routing: RoutingTable, keys: bool, seed: int = 7) -> float:
    draw = random.Random(seed).random
    chosen = [
        choose(routing, "m", {ROUTING_KEY_HEADER: f"caller-{i}"} if keys else {}, draw)
        for i in range(DRAWS)
    ]
    assert all(c is not None for c in chosen)
    return sum(1 for c in chosen if c is not None and c.version == "2") / DRAWS


@pytest.mark.parametrize("keys", [True, False], ids=["routing-key", "random"])
@pytest.mark.parametrize("weight", [0.05, 0.25, 0.5, 0.9])
def test_the_weight_is_honoured_within_statistical_bounds(keys: bool, weight: float) -> None:
    # Five standard deviations of a binomial share over 2,000 draws: a false alarm ~1 in 10^6.
    bound = 5 * (weight * (1 - weight) / DRAWS) ** 0.5
    assert abs(share(table(weight), keys) - weight) <= bound


def test_a_routing_key_keeps_its_version_and_only_moves_towards_the_candidate() -> None:
    keys = [f"caller-{i}" for i in range(500)]
    at = {w: {k: choose(table(w), "m", {ROUTING_KEY_HEADER: k}) for k in keys} for w in (0.1, 0.5)}
    for key in keys:
        again = choose(table(0.1), "m", {ROUTING_KEY_HEADER: key})
        assert again == at[0.1][key]  # the same key, the same version, every time
        first, later = at[0.1][key], at[0.5][key]
        assert first is not None and later is not None
        if first.candidate:  # a caller moved at 10% is still on the candidate at 50%
            assert later.candidate


def test_the_hash_is_stable_across_processes_and_another_rollout_spreads_keys_afresh() -> None:
    # BLAKE2b, not Python's salted hash(): these are the values every replica computes.
    assert key_point("r1", "alice") == 0.7273228589850669
    moved = [k for k in (f"c{i}" for i in range(200)) if key_point("r1", k) < 0.2]
    moved_next = [k for k in (f"c{i}" for i in range(200)) if key_point("r2", k) < 0.2]
    assert moved != moved_next


@pytest.mark.parametrize(
    "candidate",
    [
        VersionEntry(version="2", state=VersionState.PENDING),
        VersionEntry(version="2", state=VersionState.QUARANTINED, reasons=["bad"]),
        VersionEntry(version="2", state=VersionState.LIVE),  # live but bound to no artifact
    ],
    ids=["pending", "quarantined", "unbound"],
)
def test_a_candidate_that_is_not_servable_is_never_chosen(candidate: VersionEntry) -> None:
    routing = table(1.0, candidate)
    for i in range(200):
        chosen = choose(routing, "m", {ROUTING_KEY_HEADER: str(i)} if i % 2 else {})
        assert chosen is not None and chosen.version == "1" and not chosen.candidate


def test_a_candidate_missing_from_the_table_is_never_chosen() -> None:
    routing = table(1.0)
    model = routing.models["m"]
    gone = model.model_copy(update={"versions": {"1": model.versions["1"]}})
    routing = routing.model_copy(update={"models": {"m": gone}})
    chosen = choose(routing, "m", {})
    assert chosen is not None and chosen.version == "1"


def test_no_rollout_no_routing() -> None:
    routing = table(0.5)
    plain = routing.models["m"].model_copy(update={"rollout": None})
    assert choose(routing.model_copy(update={"models": {"m": plain}}), "m", {}) is None
    assert choose(routing, "other", {}) is None
    assert choose(None, "m", {}) is None


def test_weight_zero_and_one() -> None:
    assert {choose(table(0.0), "m", {}).version for _ in range(200)} == {"1"}  # type: ignore[union-attr]
    assert {choose(table(1.0), "m", {}).version for _ in range(200)} == {"2"}  # type: ignore[union-attr]

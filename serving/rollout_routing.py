"""Which version answers a request that names no version, while a model has a rollout.

A model's table entry may carry a ``Rollout`` (``wire.routing_table``): a candidate version that
answers a share ``weight`` of the requests naming no version (no path version, no model-id
header). ``choose`` decides it, from the table alone (docs/architecture.md, "Rollouts"):

- With a ``sigserve-routing-key`` header, by consistent hashing: the key and the rollout's id
  hashed to a point in [0, 1), the candidate when the point is below the weight. The same key
  gets the same version for a given rollout and weight, and as the weight grows a key that went
  to the candidate stays there (its point is still below). Another rollout (another id) spreads
  the keys afresh, so the same callers are not always the first ones moved.
- Without one, at random, with probability ``weight``.
- A candidate that is not live in the table, or not bound to its checked artifact, is never
  chosen: the default answers (fail closed). Requests that name a version never get here.

On the request path: one dictionary lookup and an attribute read for a model with no rollout;
with one, another lookup and one hash (or one random draw).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from wire.routing_table import ModelEntry, Rollout, RoutingTable, VersionState

ROUTING_KEY_HEADER = "sigserve-routing-key"
# 2**64: the hash's 8 bytes read as an integer, scaled to [0, 1).
_SCALE = float(1 << 64)


@dataclass(frozen=True, slots=True)
class Routed:
    """A request a rollout routed: the version chosen and the rollout that chose it."""

    version: str
    rollout: Rollout
    # True when the candidate answers, False when the default does.
    candidate: bool
    # Whether the candidate could take a shadow of this request (servable, and ready here).
    shadowable: bool = False


def key_point(rollout_id: str, key: str) -> float:
    """Where ``key`` falls in [0, 1) for the rollout ``rollout_id``: stable across replicas and
    restarts (BLAKE2b, not Python's salted ``hash``)."""
    digest = hashlib.blake2b(f"{rollout_id}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def candidate_servable(model: ModelEntry, rollout: Rollout) -> bool:
    """Whether the table serves the candidate: live and bound to a checked artifact."""
    entry = model.versions.get(rollout.candidate)
    return (
        entry is not None
        and entry.state == VersionState.LIVE
        and bool(entry.source)
        and bool(entry.mlmodel_digest)
    )


def choose(
    table: RoutingTable | None,
    name: str,
    headers: Mapping[str, str],
    draw: Callable[[], float] = random.random,
    ready: Callable[[ModelEntry], bool] | None = None,
) -> Routed | None:
    """The version a rollout gives a request naming no version, or None when the model has no
    rollout (or no default, or its table no such model): the caller then resolves the default
    as it always did, so unknown models still answer their 404 there. ``ready``: whether this
    replica holds the candidate loaded (``serving.rollout_warm``); until it does, the default
    answers."""
    model = table.models.get(name) if table is not None else None
    if model is None or model.rollout is None or model.default_version is None:
        return None
    rollout = model.rollout
    default = model.default_version
    if (
        rollout.candidate == default
        or not candidate_servable(model, rollout)
        or (ready is not None and not ready(model))
    ):
        return Routed(default, rollout, False)
    if rollout.weight <= 0:
        return Routed(default, rollout, False, True)
    key = headers.get(ROUTING_KEY_HEADER)
    point = key_point(rollout.id, key) if key else draw()
    if point < rollout.weight:
        return Routed(rollout.candidate, rollout, True)
    return Routed(default, rollout, False, True)

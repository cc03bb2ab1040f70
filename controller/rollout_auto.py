"""Rollouts by policy: the model tag ``sigserve.rollout`` rolls out every new compatible version.

A data scientist tags the registered model, e.g. ``sigserve.rollout = canary=5,25,50,100
step=10m shadow=20% min-requests=100 max-error-increase=0.02`` (every key optional: the admin
API's defaults; the gates' thresholds by their names, ``-`` or ``_``; ``off`` or an empty value:
no rollouts by tag): the model's own thresholds. Then each version that goes live under the contract
with a number above the default's is rolled out as ``sigserve rollout`` would, by the actor
``tag``, instead of waiting, live by header only, for someone to pin it.

How it is found: every routing table this controller takes (``TableBroadcaster.on_new``, however
it got it) is compared with the one before; a version live now and not before, above its
model's default, with no rollout under way for the model, is queued. The leader's stepper
drains the queue each tick: it reads the model's tags (one registry call per such version) and
starts the rollout. A version is rolled out by tag at most once (a rollout of it that ended,
however it ended, is not started again), so a repeated table, a takeover by a follower that
queued the same version, or a restart changes nothing. The first table a controller takes sets
its baseline: versions live before it started are not "new". A version that goes live while no
controller leads (between a leader's crash and the next one's first table) is not rolled out
by tag; ``sigserve rollout`` starts it by hand.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import replace

from pydantic import ValidationError

from controller.rollout_gates import Thresholds
from controller.rollout_request import StartRollout
from controller.rollout_store import RolloutSpec
from wire.routing_table import RoutingTable, VersionState

log = logging.getLogger(__name__)
TAG = "sigserve.rollout"
ACTOR = "tag"
# Versions queued at most (oldest dropped first): a storm of new versions on a follower that
# never drains its queue stays bounded.
MAX_QUEUED = 1_000


class PolicyError(ValueError):
    pass


def parse_policy(value: str) -> RolloutSpec | None:
    """The tag's value as a rollout of a candidate still unnamed (``candidate`` empty); None
    for ``off``. ``PolicyError`` names what is wrong."""
    text = value.strip()
    if text.lower() in ("", "off", "false", "none"):
        return None
    thresholds: dict[str, float] = {}
    fields: dict[str, object] = {"candidate": "0", "thresholds": thresholds}
    for part in text.split():
        key, sep, raw = part.partition("=")
        if not sep:
            raise PolicyError(f"{part!r} is not key=value (canary, step, shadow, min-requests)")
        try:
            if key == "canary":
                fields["steps"] = [float(s.strip().removesuffix("%")) for s in raw.split(",")]
            elif key == "step":
                fields["step_s"] = _seconds(raw)
            elif key == "shadow":
                fields["shadow"] = float(raw.strip().removesuffix("%"))
            elif key == "min-requests":
                fields["min_requests"] = int(raw)
            elif key.replace("-", "_") in Thresholds.model_fields:
                thresholds[key.replace("-", "_")] = float(raw)
            else:
                raise PolicyError(f"unknown key {key!r} (canary, step, shadow, min-requests, "
                                  "or a threshold such as max-error-increase)")  # fmt: skip
        except ValueError as exc:
            if isinstance(exc, PolicyError):
                raise
            raise PolicyError(f"{key}: {raw!r} is not a value it takes") from None
    try:
        body = StartRollout.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        raise PolicyError(f"{where}: {first['msg']}") from None
    return replace(body.spec(), candidate="")


def _seconds(text: str) -> float:
    found = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([smhd]?)", text.strip())
    if found is None:
        raise PolicyError(f"step: {text!r} is not a duration such as 90s, 10m or 2h")
    return float(found.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86_400}[found.group(2) or "s"]


def _number(version: str) -> int:
    return int(version) if version.isdigit() else -1


class NewVersions:
    """Versions that went live above their model's default, from one table to the next."""

    def __init__(self, max_queued: int = MAX_QUEUED) -> None:
        self._held: RoutingTable | None = None
        self._queued: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._max = max_queued

    def observe(self, table: RoutingTable) -> None:
        """A table's callback (``TableBroadcaster.on_new``): queue what it makes live."""
        before, self._held = self._held, table
        if before is None or before.epoch != table.epoch:
            return  # the baseline: nothing is new in the first table seen
        for name, model in table.models.items():
            was = before.models.get(name)
            if was is model:
                # The entry the last table had (a publish keeps the models that did not move;
                # entries are frozen): nothing new in it. Looking into all 50,000 versions took
                # ~65 ms of the event loop at every table.
                continue
            if model.rollout is not None or model.default_version is None:
                continue
            for version, entry in model.versions.items():
                if entry.state is not VersionState.LIVE:
                    continue
                if _number(version) <= _number(model.default_version):
                    continue
                held = was.versions.get(version) if was is not None else None
                if held is None or held.state is not VersionState.LIVE:
                    self._queued[(name, version)] = None
                    self._queued.move_to_end((name, version))
        while len(self._queued) > self._max:
            self._queued.popitem(last=False)

    def take(self) -> list[tuple[str, str]]:
        """The queued (model, version) pairs, oldest first; the queue is emptied."""
        taken = list(self._queued)
        self._queued.clear()
        return taken

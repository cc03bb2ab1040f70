"""What MLflow shows of a rollout (docs/architecture.md, "Rollouts"): the alias ``candidate`` on
the candidate while it runs (removed at the end), and the version tag ``sigserve.rollout`` on the
candidate saying where it is (``running: step 1 (25%)...``) or how it ended (``rolled-back:
errors: candidate 30.00% of 50...``). The default alias moves at a promotion through the
reconcile the publish asks for, as after a pin.

These writes are for people reading the registry: the rollout's state and the routing table are
what serve, so a registry that refuses is logged and the rollout goes on. Tag and alias writes go
through the controller's own-writes memory (``controller.own_writes``), so their webhooks
reconcile nothing. Removing an alias needs ``Registry.delete_alias``; its webhook
(``model_version_alias.deleted``) is reconciled like anyone's and writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.own_writes import OwnWrites, RememberingWriter
from controller.registry import RegistryWriter
from controller.rollout_rows import RolloutRecord
from controller.rollout_schema import RUNNING

log = logging.getLogger(__name__)
ALIAS = "candidate"
TAG = "sigserve.rollout"
# MLflow keeps a tag value to 5,000 characters; a reason is far shorter, cut all the same.
TAG_MAX = 1_000


def describe(r: RolloutRecord) -> str:
    """The tag's value: where a running rollout is, or how it ended."""
    if r.state == RUNNING:
        said = f"running: step {r.step} ({r.steps[r.step] * 100:g}%), shadow {r.shadow * 100:g}%"
        if r.history:
            last = r.history[-1]
            gates = ", ".join(f"{g['gate']} {g['outcome']}" for g in last.get("gates", []))
            said += f"; step {last['step']}: {gates}"
        return said[:TAG_MAX]
    return f"{r.state}: {r.reason or ''}"[:TAG_MAX]


def registry_effects(
    registry: RegistryWriter, own_writes: OwnWrites
) -> Callable[[RolloutRecord, str], None]:
    """The stepper's ``effects``: the alias and the tag for what just happened to ``r``."""
    writer = RememberingWriter(registry, own_writes)
    deleter: Callable[[str, str], None] | None = getattr(registry, "delete_alias", None)

    def tell(r: RolloutRecord, what: str) -> None:
        writer.set_version_tag(r.model, r.candidate, TAG, describe(r))
        if what == "started":
            writer.set_alias(r.model, ALIAS, r.candidate)
        elif r.state != RUNNING:
            if deleter is None:
                log.info("%s: alias %r left on v%s (this registry cannot remove aliases)",
                         r.model, ALIAS, r.candidate)  # fmt: skip
            else:
                deleter(r.model, ALIAS)

    return tell

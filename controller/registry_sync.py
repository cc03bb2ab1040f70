"""The gate where data scientists look: the registry's alias and tags, read and written back.

- **Policies from tags.** A registered-model tag ``sigserve.compatibility``
  (``backward|exact|none``) or ``sigserve.environment`` (``isolate|shared|off``; the older
  ``strict`` and ``warn`` read as ``isolate`` and ``off``) wins over the stored policy; the
  admin API writes the tag as well as the record, so both say the same. MLflow fires no webhook
  for registered-model tags: a tag set in the UI is seen at the next resync.
  An invalid value is ignored (logged).
- **Serving's batching from tags**: ``sigserve.max_batch_size`` (records per predict call, an
  integer >= 1) and ``sigserve.batch_wait_ms`` (how long a batch that is not full may wait for
  more, >= 0), and ``sigserve.predict_timeout_s`` (how long one predict call may take, > 0)
  go into the routing table for the model; seen at the next resync too.
- **The pin as an alias** (``serving`` by default). The alias the controller last saw is kept
  (``alias_seen``); an alias that moved since then was moved by a person, and is taken as a pin
  when its version is live under the contract, or refused (``alias_refusal``, in the admin API
  and the audit log) and put back where the default is. A pin through the admin API moves the
  alias; a new model's first version gets it.
- **The verdict as version tags**: ``sigserve.state``, ``sigserve.reasons`` (short; the whole
  list stays in the admin API), ``sigserve.decided_at``. Only tags that differ from what the
  registry holds are written. The webhooks these writes and the alias's cause are recognised as
  the controller's own and reconcile nothing (``controller.own_writes``); one that is not (on a
  follower, or after the memory forgot it) comes back to a reconcile that finds nothing to
  write: no loop either way.

**Registry controls off** (``SIGSERVE_REGISTRY_CONTROLS=false``, ``controls=False`` below): for
teams whose registry writers are not operators, the policy tags are ignored (the admin API's
policy stands) and an alias moved by hand is no pin: the controller puts its own default back
on it at once. Batching tags still apply: they tune how a model is served, not what or whether.

Writes happen after the decision is committed; a registry that refuses them costs a logged
warning, never a decision: an outage is retried, a refusal for good (permissions, a bad
request) waits for the next decision or the full resync (``controller/write_back_lane.py``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from typing import Any

from controller.compatibility import Policy, check
from controller.decisions import decide_all, is_read
from controller.environment import EnvironmentPolicy, ServingEnvironment
from controller.exceptions import RegistryError, RegistryRefused
from controller.records import ModelRecord, VersionRecord
from controller.registry import ObservedVersion, RegistryWriter
from wire.routing_table import VersionState

log = logging.getLogger(__name__)

POLICY_TAG = "sigserve.compatibility"
BATCH_SIZE_TAG = "sigserve.max_batch_size"
BATCH_WAIT_TAG = "sigserve.batch_wait_ms"
PREDICT_TIMEOUT_TAG = "sigserve.predict_timeout_s"
ENVIRONMENT_TAG = "sigserve.environment"
STATE_TAG = "sigserve.state"
REASONS_TAG = "sigserve.reasons"
DECIDED_AT_TAG = "sigserve.decided_at"
PROOF_TAG = "sigserve.proof"
# Well within MLflow's tag value limit; the admin API has every reason in full.
REASONS_MAX = 480


def policies_from_tags(
    record: ModelRecord, tags: dict[str, str], *, controls: bool = True
) -> ModelRecord:
    if not controls:
        return record
    changes: dict[str, str] = {}
    for tag, field, allowed in (
        (POLICY_TAG, "policy", {p.value for p in Policy}),
        (ENVIRONMENT_TAG, "environment_policy", {p.value for p in EnvironmentPolicy}),
    ):
        wanted = tags.get(tag)
        if wanted is None or wanted == getattr(record, field):
            continue
        if wanted in allowed:
            changes[field] = wanted
        else:
            log.warning(
                "%s: ignoring tag %s=%r (%s)", record.name, tag, wanted, "|".join(sorted(allowed))
            )
    if not changes:
        return record
    return replace(
        record,
        policy=changes.get("policy", record.policy),
        environment_policy=changes.get("environment_policy", record.environment_policy),
    )


def batching_from_tags(record: ModelRecord, tags: dict[str, str]) -> ModelRecord:
    """The model's batching and predict timeout when served, from its tags; an absent or
    invalid one is None."""
    size = _number_tag(record.name, tags, BATCH_SIZE_TAG, int, minimum=1)
    wait = _number_tag(record.name, tags, BATCH_WAIT_TAG, float, minimum=0)
    # A deadline of 0 would fail every call: the smallest one taken is a millisecond.
    timeout = _number_tag(record.name, tags, PREDICT_TIMEOUT_TAG, float, minimum=0.001)
    found = (size, wait, timeout)
    if found == (record.max_batch_size, record.batch_wait_ms, record.predict_timeout_s):
        return record
    return replace(record, max_batch_size=size, batch_wait_ms=wait, predict_timeout_s=timeout)


def _number_tag(
    name: str, tags: dict[str, str], tag: str, kind: type[int] | type[float], *, minimum: float
) -> Any:
    raw = tags.get(tag)
    if raw is None:
        return None
    try:
        value = kind(raw.strip())
    except ValueError:
        value = None
    if value is None or value < minimum or value != value:  # NaN is not a number of anything
        log.warning("%s: ignoring tag %s=%r (a number >= %g)", name, tag, raw, minimum)
        return None
    return value


def proof_from_tags(
    record: ModelRecord, tags: dict[str, str], *, controls: bool = True
) -> ModelRecord:
    """The model tag ``sigserve.proof`` (``on|off``; controller/proofs.py): whether its versions
    are proven on their input example before they go live. Absent (or ignored: an invalid
    value, or registry controls off, since off loosens the gate): the controller's default."""
    wanted = tags.get(PROOF_TAG) if controls else None
    if wanted is not None and wanted not in ("on", "off"):
        log.warning("%s: ignoring tag %s=%r (on|off)", record.name, PROOF_TAG, wanted)
        wanted = None
    return record if wanted == record.proof_policy else replace(record, proof_policy=wanted)


def follow_alias(
    record: ModelRecord,
    target: str | None,
    now: datetime,
    env: ServingEnvironment,
    *,
    controls: bool = True,
) -> ModelRecord:
    """Take an alias a person moved as a pin, or record why not. Pure; safe to repeat.

    The same test as an admin pin without force: the version must keep the contract (a version
    released by hand is live but may not), and must run here. Like that pin, it moves the
    default and keeps the contract: an alias never changes the API (docs/architecture.md).
    With ``controls`` off no move is a pin, so nothing is refused either (write_back puts the
    alias back).
    """
    if not controls:
        return record if record.alias_refusal is None else replace(record, alias_refusal=None)
    if target is None or target in (record.alias_seen, record.default_version):
        return record
    version = record.versions.get(target)
    if version is None or not is_read(version) or version.state is VersionState.PENDING:
        return record  # not decided yet: the alias waits, and so do we (see write_back)
    verdict = check(record.contract, version.signature, Policy(record.policy))
    reasons = list(verdict.reasons)
    if version.signature is None:
        reasons = ["it has no signature, so it cannot be held to the contract"]
    elif verdict.compatible and version.state is VersionState.LIVE:
        pinned = decide_all(replace(record, default_version=target), now, env)
        if pinned.versions[target].state is VersionState.LIVE:
            # Seen as well as taken: a write-back still owed for the decision before this
            # move must not take the person's next move for one it may put back (``judged``).
            return replace(pinned, alias_refusal=None, alias_seen=target)
        reasons = pinned.versions[target].reasons
    elif not reasons:
        reasons = version.reasons
    previous = record.alias_refusal or {}
    if previous.get("version") == target and previous.get("reasons") == reasons:
        return record  # refused already (the alias could not be put back yet): no new event
    refusal: dict[str, Any] = {"version": target, "reasons": reasons, "at": now.isoformat()}
    return replace(record, alias_refusal=refusal)


def version_tags(version: VersionRecord) -> dict[str, str]:
    reasons = "; ".join(version.reasons)
    if len(reasons) > REASONS_MAX:
        reasons = reasons[: REASONS_MAX - 40].rstrip() + " ... (all reasons: sigserve admin API)"
    # Written whenever the version is decided again, even to the same state and reasons: the
    # tag says when the verdict was made (docs/architecture.md), and a verdict unchanged in
    # state is rare (a new basis: rules, environment, contract), so skipping it saves no storm.
    decided = version.decided_at.isoformat(timespec="seconds") if version.decided_at else ""
    return {STATE_TAG: version.state.value, REASONS_TAG: reasons, DECIDED_AT_TAG: decided}


def _alias_should_move(record: ModelRecord, alias_now: str | None, controls: bool) -> bool:
    default = record.versions.get(record.default_version or "")
    if default is None or default.state is not VersionState.LIVE or alias_now == default.version:
        return False  # the alias never names what the gate refused
    if not controls:
        return True  # no decision could make it a pin: nothing to wait for
    waiting = record.versions.get(alias_now or "")
    # An alias on a version not decided yet waits for its decision (follow_alias).
    return waiting is None or (is_read(waiting) and waiting.state is not VersionState.PENDING)


def judged(record: ModelRecord, alias_now: str | None, controls: bool) -> bool:
    """Whether ``record`` was decided knowing the alias as it is now (``follow_alias``): where
    the controller left it, on the default, or a move it took or refused. Written back later
    than it was decided (``controller/write_back_lane.py``), the record may predate a person's
    move; putting the alias back then would undo a pin before it was judged."""
    refused = (record.alias_refusal or {}).get("version")
    return (
        not controls
        or alias_now is None
        or alias_now in (record.alias_seen, record.default_version, refused)
    )


def registry_behind(
    record: ModelRecord, observed: list[ObservedVersion], alias_now: str | None, *,
    controls: bool = True,
) -> bool:
    """Whether ``write_back`` would write anything: a verdict tag the registry shows otherwise
    (written over by someone, or not written yet), or an alias to put back. What a pass that
    changed nothing checks, so that a resync still mends what a lost webhook did not report."""
    seen = {ov.version: ov.tags for ov in observed}
    for version in record.versions.values():
        tags = seen.get(version.version)
        if tags is not None and any(
            tags.get(key) != value for key, value in version_tags(version).items()
        ):
            return True
    return judged(record, alias_now, controls) and _alias_should_move(record, alias_now, controls)


def write_back(
    registry: RegistryWriter,
    record: ModelRecord,
    observed: list[ObservedVersion],
    alias: str,
    alias_now: str | None,
    *,
    controls: bool = True,
) -> tuple[str | None, str | None, bool]:
    """Write the verdict tags and the alias that differ.

    Returns the alias as the controller acknowledges it (what ``alias_seen`` becomes), why the
    registry refused a write (None when every write went through), and whether that refusal is
    for good (``RegistryRefused``: the write-back lane does not retry it). ``alias_now`` is what
    the registry has now; the alias is left alone while a move of it the decision has not
    judged yet is in the registry (``judged``): its pass decides it first.
    """
    seen = {ov.version: ov.tags for ov in observed}
    try:
        for version in record.sorted_versions():
            if version.version not in seen:
                continue
            for key, value in version_tags(version).items():
                if seen[version.version].get(key) != value:
                    registry.set_version_tag(record.name, version.version, key, value)
        if not judged(record, alias_now, controls):
            return record.alias_seen, None, False
        if _alias_should_move(record, alias_now, controls):
            assert record.default_version is not None
            registry.set_alias(record.name, alias, record.default_version)
            return record.default_version, None, False
        if alias_now != record.default_version:
            # Left where a person put it (waiting for a decision): not yet acknowledged, so
            # the next pass still sees it as moved.
            return record.alias_seen, None, False
    except RegistryError as exc:
        permanent = isinstance(exc, RegistryRefused)
        if not permanent:  # a refusal for good is logged once, by the lane
            log.warning(
                "%s: the registry refused the verdict tags or the alias (%s); the decision "
                "stands and the write is tried again",
                record.name,
                exc,
            )
        why = f"the registry refused the verdict tags or the alias: {exc}"[:500]
        return alias_now, why, permanent
    return alias_now, None, False

"""The environment policy of a model: where its versions are proven and served, and what the
environment check may quarantine (``controller.environment``, ``controller.own_environments``).

Policies (docs/architecture.md, "Environments of their own"): ``isolate`` (the default) gives a
version that needs a package the serving environment lacks an environment of its own, and one
that fails its proof in the shared environment too (``controller.own_environments``);
``shared`` serves in the shared environment only, so a missing package quarantines; ``off``
checks nothing and serves in the shared environment. The values before issue 17 keep a
meaning: ``strict`` (the old default, which quarantined a missing package "until serving can
build a version an environment of its own") is ``isolate``, which does that; ``warn`` (the check
never quarantined, the load on serving decided) is ``off``, where the proof decides, so no
version live under ``warn`` is taken out by the upgrade (``shared`` would quarantine one whose
requirement names a package its code never imports); its warnings are no longer listed. Either
is read on the tag, the setting and the admin API, and stored and shown as the new value.
Blocking reasons and warnings are the same under ``isolate`` and ``shared`` except for missing
packages.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

# The values before issue 17, and the value each means now (the module docstring says why).
LEGACY_POLICIES = {"strict": "isolate", "warn": "off"}


class EnvironmentPolicy(StrEnum):
    ISOLATE = "isolate"
    SHARED = "shared"
    OFF = "off"

    @classmethod
    def _missing_(cls, value: object) -> EnvironmentPolicy | None:
        # ``EnvironmentPolicy("strict")`` is ISOLATE: so the setting, the admin API's body and a
        # stored record with an old value all read as the new one.
        if isinstance(value, str) and value.lower() in LEGACY_POLICIES:
            return cls(LEGACY_POLICIES[value.lower()])
        return None


# Every value a tag or a setting may hold: the policies and the old names for them.
POLICY_VALUES = frozenset({p.value for p in EnvironmentPolicy} | set(LEGACY_POLICIES))


def with_policy_values(tags: Mapping[str, str], key: str) -> Mapping[str, str]:
    """``tags`` with the policy tag ``key`` read as the value it means now (``strict`` ->
    ``isolate``), so that a tag someone set before issue 17 keeps working."""
    raw = tags.get(key)
    if raw is None or policy_value(raw) == raw:
        return tags
    return {**tags, key: policy_value(raw)}


def policy_value(raw: str) -> str:
    """The policy ``raw`` names, as stored and shown (``strict`` -> ``isolate``); ``raw`` itself
    when it names none (the caller refuses it)."""
    try:
        return EnvironmentPolicy(raw).value
    except ValueError:
        return raw

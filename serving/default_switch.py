"""What a replica answers while the defaults a new table moves are warming.

A table that moves a model's default is taken at once for everything else in it; the model keeps
answering for its default with the version it had until the new one is loaded
(``serving.table_source``, docs/architecture.md "No cold start"). ``held_back`` computes that
table; ``default_key`` names a default by the artifact it loads, so a warm-up is remembered for
exactly that artifact.
"""

from __future__ import annotations

from collections.abc import Set

from wire.routing_table import ModelEntry, RoutingTable, VersionState


def held_back(
    latest: RoutingTable, answered: RoutingTable | None, warmed: Set[tuple[str, str, str, str]]
) -> RoutingTable | None:
    """``latest`` as it may be answered while the defaults it moves are not all ``warmed``.

    A model whose default moves to a live version not yet warmed keeps the default (and the
    contract that goes with it) that ``answered`` gives it, as long as that version is still
    live, on the same artifact, in ``latest``; everything else (states, reasons, removals, other
    versions) is ``latest``'s. A model ``answered`` does not have waits for its default, as
    ``answered`` had nothing to say for it. ``latest`` itself when nothing waits; None when
    something waits and nothing is answered yet (a starting replica).
    """
    # Compared by name whatever the epochs: a controller with a new database still names the
    # same models and artifacts, and its revisions alone are not comparable.
    before = answered.models if answered is not None else {}
    models: dict[str, ModelEntry] = {}
    waits = False
    for name, model in latest.models.items():
        old = before.get(name)
        if (
            not _warms(model)
            or default_key(name, model) in warmed
            or (old is not None and _same_default(old, model))
        ):
            models[name] = model
            continue
        if old is None:
            waits = True  # a new model: unknown until its default is warm, as it was
        elif old.default_version is None or _same_default(old, model, old.default_version):
            waits = True
            models[name] = model.model_copy(
                update={"default_version": old.default_version, "contract": old.contract}
            )
        else:
            models[name] = model  # the old default is gone: nothing to keep answering with
    if not waits:
        return latest
    if answered is None:
        return None
    return latest.model_copy(update={"models": models})


def _warms(model: ModelEntry) -> bool:
    """Whether the model's default is a version a replica loads ahead of time."""
    entry = model.versions.get(model.default_version) if model.default_version else None
    return (
        entry is not None
        and entry.state == VersionState.LIVE
        and bool(entry.source)
        and bool(entry.mlmodel_digest)
    )


def default_key(name: str, model: ModelEntry) -> tuple[str, str, str, str]:
    entry = model.versions.get(model.default_version) if model.default_version else None
    if entry is None:
        return (name, "", "", "")
    return (name, entry.version, entry.source or "", entry.mlmodel_digest or "")


def _same_default(old: ModelEntry, new: ModelEntry, version: str | None = None) -> bool:
    """Whether ``new`` serves ``version`` (``new``'s default by default) live, on the artifact
    ``old`` served for its default."""
    if version is None:
        version = new.default_version
    if version is None or version != old.default_version:
        return False
    then, now = old.versions.get(version), new.versions.get(version)
    return (
        then is not None
        and now is not None
        and now.state == VersionState.LIVE
        and (then.source, then.mlmodel_digest) == (now.source, now.mlmodel_digest)
    )

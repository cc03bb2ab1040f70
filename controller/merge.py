"""The stored record brought up to what the registry says (``merge_observed``): the reconciler's
step between its reads and its decision (``controller/reconciler.py``), a pure function."""

from __future__ import annotations

from dataclasses import asdict, replace

from controller.artifacts import ArtifactFacts
from controller.decisions import NOT_READ, is_read
from controller.records import ModelRecord, VersionRecord
from controller.registry_reads import ObservedVersion
from wire.routing_table import VersionState


def _with_facts(known: VersionRecord, facts: ArtifactFacts) -> VersionRecord:
    return replace(
        known,
        signature=facts.signature,
        signature_read=True,
        artifact_uri=facts.source,
        mlmodel_digest=facts.mlmodel_digest,
        manifest=[f.model_dump() for f in facts.manifest] if facts.manifest is not None else None,
        environment=asdict(facts.environment),
        # What was decided about other contents does not hold for these, nor a failure to
        # load them.
        decided_against=None,
        load_failure=known.load_failure if known.mlmodel_digest == facts.mlmodel_digest else None,
    )


def merge_observed(
    current: ModelRecord,
    observed: list[ObservedVersion],
    facts: dict[str, ArtifactFacts],
    failures: dict[str, str],
    broken: dict[str, str] | None = None,
) -> ModelRecord:
    """The stored record brought up to what the registry says; versions it lacks are dropped.

    ``failures`` are temporary (the version stays pending, retried with backoff); ``broken``
    are permanent (the version is quarantined with the cause, read again only at a resync).
    """
    versions: dict[str, VersionRecord] = {}
    for ov in observed:
        known = current.versions.get(ov.version)
        if known is None or (known.source and ov.source and known.source != ov.source):
            # A new version, or a version number that came back with other contents:
            # nothing known about it holds.
            known = VersionRecord(version=ov.version)
        known = replace(known, source=ov.source)
        if not ov.ready:
            known = replace(
                known,
                state=VersionState.PENDING,
                reasons=[f"registry status is {ov.status}; waiting for READY"],
            )
        elif ov.version in facts:
            known = _with_facts(known, facts[ov.version])
        elif broken and ov.version in broken:
            # What an earlier read found no longer stands (a version read again because its
            # location is no longer allowed): nothing of it is published or decided on.
            known = replace(
                known,
                state=VersionState.QUARANTINED,
                reasons=[
                    f"its artifact cannot be read, so it cannot be checked: {broken[ov.version]}"
                ],
                signature=None,
                signature_read=False,
                artifact_uri=None,
                mlmodel_digest=None,
                manifest=None,
                environment=None,
                own_environment=None,
                warnings=[],
                decided_against=None,
            )
        elif not is_read(known):
            why = failures.get(ov.version, NOT_READ)
            known = replace(
                known,
                state=VersionState.PENDING,
                reasons=[f"its artifact could not be read yet ({why}); retrying"],
            )
        versions[ov.version] = known
    return replace(current, versions=versions)

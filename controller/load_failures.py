"""``POST /serving/load-failures``: a serving replica could not load a version's artifact.

Serving checks nothing a second time and decides nothing: it reports what it saw, and the
controller decides, as it does for everything else. A report is about one artifact (named by its
MLmodel digest) and quarantines the version with the cause as its reason until an operator
releases it ("try again") or the version's artifact changes. Only failures that cannot pass by
themselves are reported (the replica downloaded the artifact and could not load it, or got
another MLmodel than the one checked); a download that failed (MLflow down) is not.

Replicas authenticate with a token of their own (``SIGSERVE_SERVING_TOKEN``), not the admin
token: a replica holds it in its settings, and it can do this and nothing else. Reports are
safe to repeat (the first report about an artifact is kept, a repeat changes nothing) and
replicas send at most one per model id every half minute (``serving.load_reports``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, StringConstraints

from controller import commands
from controller.decisions import load_failure_of
from controller.exceptions import NotFound, StaleReport
from controller.guard import Gate
from controller.services import Services, services


def _count_refused(svc: Services) -> None:
    svc.metrics.load_failure_reports.labels("unauthorized").inc()


# Checked before the body is read (controller.guard); a report is a few hundred bytes, its
# cause at most 1,000 characters.
GATE = Gate(
    "/serving", 16 * 1024, lambda settings: settings.serving_token, "serving", _count_refused
)
router = APIRouter(prefix=GATE.prefix, max_body_size=GATE.max_body)

REPORT_TEXT = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)
]


class ArtifactReport(BaseModel):
    """What every replica report names: one artifact of one version, and who saw it (load
    failures here, proofs in ``controller.proof_reports``)."""

    model_config = ConfigDict(extra="forbid")
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    version: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,32}$")]
    mlmodel_digest: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    replica: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:#-]{1,128}$")]


class LoadFailureReport(ArtifactReport):
    # ``load-failed``: downloaded, could not be loaded; ``artifact-mismatch``: the MLmodel
    # downloaded is not the one the controller checked.
    kind: Literal["load-failed", "artifact-mismatch"]
    cause: REPORT_TEXT


@router.post("/load-failures")
async def report_load_failure(
    report: LoadFailureReport, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any]:
    failure = {
        "kind": report.kind,
        "cause": report.cause,
        "mlmodel_digest": report.mlmodel_digest,
        "replica": report.replica,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        decided = await asyncio.to_thread(
            commands.record_load_failure,
            svc.store,
            report.model,
            report.version,
            failure,
            svc.serving_environment,
        )
    except StaleReport:
        svc.metrics.load_failure_reports.labels("stale").inc()
        raise
    except NotFound:
        svc.metrics.load_failure_reports.labels("unknown").inc()
        raise
    version = decided.versions[report.version]
    # The failure kept is this report's (to the second) unless an earlier one was kept.
    recorded = version.load_failure == failure
    svc.metrics.load_failure_reports.labels("recorded" if recorded else "repeated").inc()
    published = await svc.publish_change(decided.name, "serving") if recorded else True
    return {
        "model": decided.name,
        "version": version.version,
        "recorded": recorded,
        "state": version.state.value,
        "reasons": version.reasons,
        "load_failure": load_failure_of(version),
        "published": published,
    }

"""``POST /serving/load-failures``: a serving replica could not load a version's artifact.

Serving checks nothing a second time and decides nothing: it reports what it saw, and the
controller decides, as it does for everything else. A report is about one artifact (named by its
MLmodel digest) and quarantines the version with the cause as its reason until an operator
releases it ("try again") or the version's artifact changes, except for the model's live
default: a report about it is kept and shown (a warning on the version, the admin API, an audit
event, the ``default_live`` count, a log line) and the version stays live, since a report alone
never takes a whole endpoint out (docs/architecture.md, "A load that cannot pass goes back to
the controller"). Only failures that cannot pass by themselves are reported (the replica
downloaded the artifact and could not load it, or got another MLmodel than the one checked); a
download that failed (MLflow down) is not.

Replicas authenticate with a token of their own (``SIGSERVE_SERVING_TOKEN``), not the admin
token: a replica holds it in its settings, and it can do this and nothing else. Reports are
safe to repeat (the first report about an artifact is kept, a repeat changes nothing);
replicas keep their own to a budget (``serving.load_reports``) and the controller its own per
replica and in all (``controller.report_limits``: 429 past it).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StringConstraints

from controller import commands
from controller.decisions import held, load_failure_of
from controller.exceptions import NotFound, StaleReport
from controller.guard import Gate
from controller.report_limits import ReportLimits, report_limits
from controller.services import Services, services

log = logging.getLogger(__name__)


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
    # The environment of its own the report was made in (``EnvironmentSpec.digest``); absent:
    # the shared serving environment. It counts only for the environment the version is
    # assigned (``controller.own_environments``).
    environment_digest: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None

    def facts(self) -> dict[str, Any]:
        """What is kept of the report with the version: the artifact and environment it is
        about, who saw it and when (``environment_digest`` only when it names one)."""
        found: dict[str, Any] = {
            "mlmodel_digest": self.mlmodel_digest,
            "replica": self.replica,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if self.environment_digest is not None:
            found["environment_digest"] = self.environment_digest
        return found


class LoadFailureReport(ArtifactReport):
    # ``load-failed``: downloaded, could not be loaded; ``artifact-mismatch``: the MLmodel
    # downloaded is not the one the controller checked.
    kind: Literal["load-failed", "artifact-mismatch"]
    cause: REPORT_TEXT


def kept(recorded: dict[str, Any] | None, report: dict[str, Any]) -> bool:
    """Whether ``recorded`` is ``report`` (to the second), and not an earlier one's."""
    return recorded is not None and all(recorded.get(k) == v for k, v in report.items())


@router.post("/load-failures", response_model=None)
async def report_load_failure(
    report: LoadFailureReport,
    request: Request,
    svc: Annotated[Services, Depends(services)],
    limits: Annotated[ReportLimits, Depends(report_limits)],
) -> dict[str, Any] | JSONResponse:
    refused = limits.refuse(report.replica, request.url.path)
    if refused is not None:
        svc.metrics.load_failure_reports.labels("limited").inc()
        return refused
    failure = {"kind": report.kind, "cause": report.cause, **report.facts()}
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
    recorded = kept(version.load_failure, failure)
    if recorded and version.load_failure is not None and held(version.load_failure):
        # The live default stays live: an operator's alert, not a decision.
        result = "default_live"
        log.warning(
            "replica %s reports that %s v%s, the live default, cannot load (%s); it stays "
            "live until an operator pins another version or quarantines it",
            report.replica, decided.name, report.version, report.cause,
        )  # fmt: skip
    else:
        result = "recorded" if recorded else "repeated"
    svc.metrics.load_failure_reports.labels(result).inc()
    published = await svc.publish_change(decided.name, "serving") if recorded else True
    return {
        "model": decided.name,
        "version": version.version,
        "recorded": recorded,
        "state": version.state.value,
        "reasons": version.reasons,
        "warnings": version.warnings,
        "load_failure": load_failure_of(version),
        "published": published,
    }

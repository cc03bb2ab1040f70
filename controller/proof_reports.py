"""``POST /serving/proofs``: a serving replica proved a version before its first request.

The replica loaded the artifact the table binds, called it on its own input example and checked
the answer against its output schema (``serving.proofs``); it reports what it found, and the
controller decides in its own transaction (``commands.record_proof``): passed -> live, failed ->
quarantined with the cause (a failed proof of the live default, which only a forged report
sends, is kept as a warning and it stays live). Same credential, bounds and manners as load
reports (``controller.load_failures``): the serving token, keyed by the MLmodel digest, safe to
repeat (the first report about an artifact is kept), refused as stale when made in another
environment than the version is assigned (``environment_digest``: absent, the shared one;
``controller.own_environments``), rate-limited by the replicas and by the
controller, on the same budgets (``controller.report_limits``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import model_validator

from controller import commands
from controller.decisions import held
from controller.exceptions import StaleReport
from controller.load_failures import GATE, REPORT_TEXT, ArtifactReport, kept
from controller.proofs import FAILED, proof_of, stale_environment
from controller.records import ModelRecord
from controller.report_limits import ReportLimits, report_limits
from controller.services import Services, services

log = logging.getLogger(__name__)

router = APIRouter(prefix=GATE.prefix, max_body_size=GATE.max_body)


class ProofReport(ArtifactReport):
    outcome: Literal["passed", "failed"]
    # False: the artifact has no input example, so it was loaded and not called.
    exercised: bool
    # Why it failed: the exception's type and first line, or the undeclared column.
    cause: REPORT_TEXT | None = None

    @model_validator(mode="after")
    def _failure_has_cause(self) -> ProofReport:
        if self.outcome == FAILED and self.cause is None:
            raise ValueError("a failed proof needs its cause")
        return self


def _record(
    svc: Services, name: str, version: str, proof: dict[str, Any], environment: str | None
) -> ModelRecord:
    """Refuse a proof made in another environment than the version is assigned as stale (a
    replica proving from an older table: the shared environment, for a version since given
    its own), then record it. Checked on a read before the write: a report that passes it
    as the version is moved elsewhere is kept and counts for nothing, since a proof counts
    only for the environment its version is assigned (``proofs.proof_in``)."""
    current = svc.store.load_model(name)
    known = current.versions.get(version) if current is not None else None
    if known is not None and known.mlmodel_digest == proof["mlmodel_digest"]:
        stale = stale_environment(known, environment)
        if stale is not None:
            raise StaleReport(stale)
    return commands.record_proof(svc.store, name, version, proof, svc.serving_environment)


@router.post("/proofs", response_model=None)
async def report_proof(
    report: ProofReport,
    request: Request,
    svc: Annotated[Services, Depends(services)],
    limits: Annotated[ReportLimits, Depends(report_limits)],
) -> dict[str, Any] | JSONResponse:
    refused = limits.refuse(report.replica, request.url.path)
    if refused is not None:
        svc.metrics.load_failure_reports.labels("limited").inc()
        return refused
    proof: dict[str, Any] = {
        "outcome": report.outcome,
        "exercised": report.exercised,
        **report.facts(),
    }
    if report.cause is not None:
        proof["cause"] = report.cause
    where = "own" if report.environment_digest else "shared"
    try:
        decided = await asyncio.to_thread(
            _record, svc, report.model, report.version, proof, report.environment_digest
        )
    except StaleReport:
        svc.metrics.proof_reports.labels("stale", where).inc()
        raise
    version = decided.versions[report.version]
    recorded = kept(version.proof, proof)
    svc.metrics.proof_reports.labels(_result(proof) if recorded else "repeated", where).inc()
    if recorded and version.proof is not None and held(version.proof):
        # Only a forged report proves a live version: counted with load failures of defaults.
        svc.metrics.load_failure_reports.labels("default_live").inc()
        log.warning(
            "replica %s reports a failed proof of %s v%s, the live default (%s); it stays live",
            report.replica, decided.name, report.version, report.cause,
        )  # fmt: skip
    published = await svc.publish_change(decided.name, "serving") if recorded else True
    return {
        "model": decided.name,
        "version": version.version,
        "recorded": recorded,
        "state": version.state.value,
        "reasons": version.reasons,
        "warnings": version.warnings,
        "proof": proof_of(version),
        "published": published,
    }


def _result(proof: dict[str, Any]) -> str:
    if proof["outcome"] != "passed":
        return "failed"
    return "passed" if proof.get("exercised", True) else "not_exercised"

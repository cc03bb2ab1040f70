"""``POST /serving/proofs``: a serving replica proved a version before its first request.

The replica loaded the artifact the table binds, called it on its own input example and checked
the answer against its output schema (``serving.proofs``); it reports what it found, and the
controller decides in its own transaction (``commands.record_proof``): passed -> live, failed ->
quarantined with the cause. Same credential, bounds and manners as load reports
(``controller.load_failures``): the serving token, keyed by the MLmodel digest, safe to repeat
(the first report about an artifact is kept), rate-limited by the replicas.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import model_validator

from controller import commands
from controller.load_failures import GATE, REPORT_TEXT, ArtifactReport
from controller.proofs import FAILED, proof_of
from controller.services import Services, services

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


@router.post("/proofs")
async def report_proof(
    report: ProofReport, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any]:
    proof: dict[str, Any] = {
        "outcome": report.outcome,
        "exercised": report.exercised,
        "mlmodel_digest": report.mlmodel_digest,
        "replica": report.replica,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if report.cause is not None:
        proof["cause"] = report.cause
    decided = await asyncio.to_thread(
        commands.record_proof,
        svc.store,
        report.model,
        report.version,
        proof,
        svc.serving_environment,
    )
    version = decided.versions[report.version]
    # The proof kept is this report's (to the second) unless an earlier one was kept.
    recorded = version.proof == proof
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

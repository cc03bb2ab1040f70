"""The dry run's proof (``sigserve check --prove``): the artifact proven where it would be served.

A dry run whose verdict would go live awaits its proof as the registered version would. With
``prove`` the controller asks the serving app for a trial (``POST {SIGSERVE_SERVING_URL}/-/trials``
with the serving token, ``serving.trials``): the artifact's source, MLmodel digest and manifest
as the controller read them, its own signature, the environment of its own it would be served
in, the model's predict deadline and the trial's. A replica loads it beside its multiplexer and
calls it on its own input example, as a replica proves a registered version, and answers what
its report would say. The answer is decided again as the gate decides such a report
(``controller.dry_run.with_report``): a failed proof quarantines it with the cause as the 409
words it, a load that fails too; a proof that failed in the shared environment of a version
that pins what the shared one lacks sends it to an environment of its own, where it is tried
once more, as the gate would. Nothing is written on either side.

Not proven: a verdict that is not live (the gate would not prove it either), a model whose
proof policy is off, a model directory on the user's disk (the serving app cannot read it). A
trial the serving app cannot make (unreachable, busy, its store down, past the deadline) is a
problem (503/504): the dry run cannot tell. docs/architecture.md, "Before registering: a dry
run".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx

from controller.dry_run import Basis, DryRun, with_report
from controller.exceptions import ControllerError, InvalidRequest
from wire.routing_table import VersionState

log = logging.getLogger(__name__)

TRIALS_PATH = "/-/trials"
# The whole trial on the replica: an environment's build, a download and a load, the call.
PROVE_TIMEOUT_S = 600.0
# Past the trial's own deadline, for the replica's 504 to arrive rather than ours.
_ANSWER_MARGIN_S = 15.0
# Less than this left of the deadline: no second trial is started (a load alone takes longer).
_LEAST_TRIAL_S = 5.0
# A trial in the shared environment, then in its own when the gate would move it there.
_TRIALS = 2
_DETAIL_LIMIT = 500

NEEDS_SERVING_URL = (
    "--prove needs the serving app's URL: the controller has no SIGSERVE_SERVING_URL (set it to "
    "where the serving app answers, e.g. http://127.0.0.1:8000, and restart the controller)"
)
NEEDS_SERVING_AUTH = (
    "--prove needs the serving token: the controller has no SIGSERVE_SERVING_TOKEN, which the "
    "serving app takes a trial with"
)
LOCAL = (
    "the serving app cannot read a model directory on your disk: log the model "
    "(mlflow.<flavor>.log_model) and check its runs:/ URI with --prove"
)
NOT_LIVE = "not proven: the gate would not prove a version it does not let through"


class CannotProve(ControllerError):
    """The dry run cannot be proven as configured (nothing to retry): ``status`` and ``slug``
    of the problem it is answered with."""

    status = 501
    slug = "prove-not-configured"


class TrialFailed(ControllerError):
    """The serving app did not make the trial: the dry run cannot tell (503, or 504 past the
    deadline)."""

    def __init__(self, detail: str, *, status: int = 503) -> None:
        super().__init__(detail)
        self.status = status


def trial_body(basis: Basis, timeout_s: float) -> dict[str, Any]:
    """What a replica is asked to prove: the artifact the gate would bind the version to."""
    version, spec = basis.candidate, basis.environment
    return {
        "model": basis.decided.name,
        "source": version.artifact_uri,
        "mlmodel_digest": version.mlmodel_digest,
        "manifest": version.manifest,
        "signature": version.signature,
        "environment": spec.model_dump(mode="json") if spec is not None else None,
        # Never past the trial's own deadline: a replica refuses a longer one (422).
        "predict_timeout_s": min(basis.decided.predict_timeout_s, timeout_s)
        if basis.decided.predict_timeout_s is not None else None,
        "timeout_s": timeout_s,
    }


def fold(result: DryRun, answer: dict[str, Any], now: datetime) -> DryRun:
    """``result`` decided again with a replica's trial ``answer``, as its report would be."""
    basis = result.basis
    assert basis is not None
    spec = basis.environment
    report: dict[str, Any] = {
        "mlmodel_digest": basis.candidate.mlmodel_digest,
        "replica": str(answer.get("replica") or "?"),
        "at": now.isoformat(timespec="seconds"),
    }
    if spec is not None:
        report["environment_digest"] = spec.digest
    cause = answer.get("cause")
    where = (f"its own environment ({spec.kind}, {spec.digest[:12]})" if spec is not None
             else "the shared serving environment")  # fmt: skip
    proof = {"outcome": answer.get("outcome"), "exercised": bool(answer.get("exercised")),
             "cause": cause, "environment": where, "replica": report["replica"],
             "elapsed_ms": answer.get("elapsed_ms")}  # fmt: skip
    failure = answer.get("failure")
    if failure in ("load-failed", "artifact-mismatch"):
        decided = with_report(result, load_failure={**report, "kind": failure, "cause": cause})
    else:
        passed = answer.get("outcome") in ("passed", "not_exercised")
        found = {**report, "outcome": "passed" if passed else "failed",
                 "exercised": bool(answer.get("exercised"))}  # fmt: skip
        if not passed:
            found["cause"] = cause or "?"
        decided = with_report(result, proof=found)
    said = {"passed": "passed", "not_exercised": "loaded only, it has no input example"}.get(
        str(answer.get("outcome")), "failed"
    )
    note = (f"proof on its input example in {where} (replica {report['replica']}, "
            f"{answer.get('elapsed_ms', '?')} ms): {said}")  # fmt: skip
    return replace(decided, proof=proof, notes=[*decided.notes, note])


def trials_url(serving_url: str | None, token: str | None, *, local: bool) -> str:
    """Where trials are asked for; ``CannotProve`` (configuration) or ``InvalidRequest`` (a
    model directory on the user's disk) when a dry run cannot be proven: asked before the
    artifact is read."""
    if serving_url is None:
        raise CannotProve(NEEDS_SERVING_URL)
    if token is None:
        raise CannotProve(NEEDS_SERVING_AUTH)
    if local:
        raise InvalidRequest("prove", LOCAL)
    return serving_url.rstrip("/") + TRIALS_PATH


async def prove(
    result: DryRun,
    *,
    serving_url: str | None,
    token: str | None,
    local: bool = False,
    timeout_s: float = PROVE_TIMEOUT_S,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> DryRun:
    """``result`` with its proof made by the serving app at ``serving_url``, where the gate
    would make it; ``CannotProve`` or ``TrialFailed`` when it cannot be made."""
    url = trials_url(serving_url, token, local=local)
    # One deadline for both trials (the shared environment, then its own): the CLI waits for
    # PROVE_TIMEOUT_S and a margin, not for twice that.
    deadline = clock() + timeout_s
    async with httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout_s + _ANSWER_MARGIN_S, connect=5.0),
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        for _ in range(_TRIALS):
            basis = result.basis
            if basis is None or result.verdict is not VersionState.LIVE:
                # Blocked before its proof, or by it (then the reasons say so).
                return replace(result, notes=[*result.notes, NOT_LIVE]) if result.proof is None \
                    else result  # fmt: skip
            if not basis.awaits_proof():
                return result  # proven, or the model's policy proves nothing (its note says)
            left = deadline - clock()
            if left < _LEAST_TRIAL_S:
                raise TrialFailed(
                    f"no time left for a trial in its own environment: the dry run's "
                    f"{timeout_s:g} s went to the trial in the shared one", status=504
                )
            answer = await _trial(client, url, trial_body(basis, left), left + _ANSWER_MARGIN_S)
            result = fold(result, answer, datetime.now(UTC))
    return result


async def _trial(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], wait_s: float
) -> dict[str, Any]:
    where = f"the serving app at {url}"
    try:
        response = await client.post(url, json=body, timeout=httpx.Timeout(wait_s, connect=5.0))
    except httpx.TimeoutException:
        raise TrialFailed(f"{where} did not answer the trial in time", status=504) from None
    except httpx.TransportError as exc:
        raise TrialFailed(f"cannot reach {where} ({type(exc).__name__}: {exc})"[:_DETAIL_LIMIT]
                          ) from None  # fmt: skip
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code == 200 and isinstance(answer, dict) and "outcome" in answer:
        return answer
    detail = answer.get("detail") if isinstance(answer, dict) else None
    said = str(detail or response.reason_phrase or "no answer")[:_DETAIL_LIMIT]
    log.warning("the trial of %s was not made: %s answered %d: %s", body["source"], where,
                response.status_code, said)  # fmt: skip
    if response.status_code == 401:
        said += " (the controller's SIGSERVE_SERVING_TOKEN is not the serving app's)"
    # Busy, down or past its deadline: ask again later (503, 504). Refused (401, a 422 on the
    # trial's body): asking again changes nothing, so no Retry-After (502).
    code = response.status_code
    status = 504 if code == 504 else 502 if 400 <= code < 500 and code != 429 else 503
    raise TrialFailed(f"{where} answered {code}: {said}", status=status)

"""The proof before a version's first request, as the controller decides on it: pure functions.

A version that passes the signature and environment checks is not live yet: it stays
``pending`` ("being proven") until a serving replica has loaded the exact artifact the table
binds and called it on its own input example, with its answer checked against its output schema
(``serving.proofs``), and reported the outcome (``controller.proof_reports``). Passed: live, its
warnings kept ("not exercised" when it was logged without an example: loaded only). Failed:
quarantined with the cause, until an operator releases it ("try again") or its artifact changes.
The guarantee: docs/architecture.md, "Proven before its first request".

A proof is about one artifact, named by its MLmodel digest, in one environment (its
``environment_digest``; absent: the shared serving environment), and is stored with the version:
a restart never proves again, a new artifact does, and so does another environment of its own
(``controller.own_environments``): a proof counts only for the environment the version is
assigned, and a report from another is refused as stale. Versions live before proofs existed
carry a proof of outcome ``before-proofs`` (the migration that added proofs wrote it), so an
upgrade takes no version out of service.

Policy: the model tag ``sigserve.proof`` (``on|off``, ``ModelRecord.proof_policy``) and, for
models without the tag, ``SIGSERVE_DEFAULT_PROOF`` (``on`` by default), which reaches the
decision as ``ProvingEnvironment.default_proof``. A plain ``ServingEnvironment`` (a decision made
where no replica proves anything: unit tests, tools) proves nothing: today's behaviour. Off,
no proof is asked for and none recorded counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from controller.environment import ServingEnvironment
from controller.own_environments import counts, environment_digest, is_building
from controller.records import ModelRecord, VersionRecord
from wire.routing_table import VersionState

BEING_PROVEN = "being proven: loaded and called on its input example before its first request"
NOT_EXERCISED = "not exercised: it was logged without an input example"
BEFORE_PROOFS = "not proven: it was live before sigserve proved versions"

PASSED = "passed"
FAILED = "failed"
# Written by migration 0013 for versions live before proofs existed.
GRANDFATHERED = "before-proofs"


class ProofPolicy(StrEnum):
    ON = "on"
    OFF = "off"


@dataclass(frozen=True)
class ProvingEnvironment(ServingEnvironment):
    """The serving environment of replicas that prove versions, and the controller's default
    proof policy for models without a ``sigserve.proof`` tag (``SIGSERVE_DEFAULT_PROOF``).

    Its ``digest`` is the environment's alone: the policy enters a decision's basis by itself
    (``proof_basis``), only where it changes something.
    """

    default_proof: ProofPolicy = ProofPolicy.ON


def policy(model: ModelRecord, env: ServingEnvironment) -> ProofPolicy:
    """The model's tag if it has one, else the controller's default (off without replicas that
    prove)."""
    if model.proof_policy is not None:
        return ProofPolicy(model.proof_policy)
    if isinstance(env, ProvingEnvironment):
        return env.default_proof
    return ProofPolicy.OFF


def proof_in(version: VersionRecord, digest: str | None) -> dict[str, Any] | None:
    """The version's recorded proof, if it is about the artifact the version has now, made in
    environment ``digest`` (None: the shared one)."""
    return version.proof if counts(version.proof, version, digest) else None


def proof_of(version: VersionRecord) -> dict[str, Any] | None:
    """The version's recorded proof, if it is about the artifact the version has now, made in
    the environment the version is assigned."""
    return proof_in(version, environment_digest(version))


def stale_environment(version: VersionRecord, reported: str | None) -> str | None:
    """Why a proof made in environment ``reported`` (None: the shared one) cannot count for
    the version, or None when it can."""
    assigned = environment_digest(version)
    if reported == assigned:
        return None
    where = f"an environment of its own ({assigned[:12]})" if assigned else "the shared one"
    made = f"environment {reported[:12]}" if reported else "the shared environment"
    return (
        f"version {version.version} is proven and served in {where}, so a proof made in "
        f"{made} is not about it"
    )


def proof_basis(model: ModelRecord, version: VersionRecord, env: ServingEnvironment) -> Any:
    """What the proof adds to the basis a version is decided against; None adds nothing.

    Nothing while a proof is awaited under the policy on (so decisions stored before proofs
    keep their basis); the proof once it is recorded, whichever environment it was made in (a
    fact about the artifact: where it counts is the decision's to say); ``off`` where the
    policy turns proofs off for a version that has one or for a model tagged off.
    """
    proof = version.proof
    if proof is not None and proof.get("mlmodel_digest") != version.mlmodel_digest:
        proof = None
    if policy(model, env) is ProofPolicy.ON:
        return proof
    if proof is not None or model.proof_policy is not None:
        return "off"
    return None


def failed_proof_reason(proof: dict[str, Any]) -> str:
    where = "in its own environment" if proof.get("environment_digest") else "on serving"
    return (
        f"failed its proof {where} (replica {proof.get('replica', '?')} at "
        f"{proof.get('at', '?')}): {proof.get('cause', '?')}; release it to try again"
    )


def awaits_proof(version: VersionRecord) -> bool:
    """Whether the version is pending for its proof (what the routing table tells replicas):
    in the shared environment, or in its own, being built."""
    reasons = version.reasons
    return (
        version.state is VersionState.PENDING
        and len(reasons) == 1
        and (reasons[0] == BEING_PROVEN or is_building(reasons[0]))
    )

"""Will every client written against the contract keep working with this version?

``check`` is the one function that decides. It is pure (signatures in, verdict out), so every
rule is tested without a registry, and a property test holds it to MLflow's own enforcement.
Signatures come in MLflow's ``ModelSignature.to_dict()`` form. Policies:

- ``backward`` (the default): the rules of ``schemas`` (inputs, outputs) and ``params``. Inputs
  are written by clients and read by the version, outputs the other way round; the ground truth
  is what MLflow's enforcement accepts without changing a value.
- ``exact``: the version's signature must equal the contract (the notebook's rule).
- ``none``: anything goes, even no signature.

A version with no signature cannot be checked: quarantined unless the policy is ``none``.
Reasons are sentences a person can act on: they name the field, what the contract says and
what the version does instead. Anchors: Confluent Schema Registry's BACKWARD mode, Buf's
breaking-change rules.
"""

from __future__ import annotations

from mlflow.models import ModelSignature

from controller.compatibility import exact, params, schemas
from controller.compatibility.verdict import Break, Policy, Verdict
from controller.records import Signature

__all__ = ["Break", "Policy", "Verdict", "check"]

NO_SIGNATURE = (
    "this version has no signature, so it cannot be checked; log it with a signature "
    "or set the model's policy to 'none'"
)
NO_CONTRACT = (
    "the model has no contract (its default version has no signature); pin a default "
    "version that has one"
)


def check(contract: Signature | None, candidate: Signature | None, policy: Policy) -> Verdict:
    if policy is Policy.NONE:
        return Verdict()
    if candidate is None:
        return Verdict([Break("signature", None, NO_SIGNATURE)])
    if contract is None:
        return Verdict([Break("signature", None, NO_CONTRACT)])
    if policy is Policy.EXACT:
        return Verdict(exact.compare(contract, candidate))
    return backward(contract, candidate)


def backward(contract: Signature, candidate: Signature) -> Verdict:
    ours = _parse(contract)
    theirs = _parse(candidate)
    breaks = schemas.compare("input", ours.inputs, theirs.inputs)
    breaks += schemas.compare("output", ours.outputs, theirs.outputs)
    param_breaks, warnings = params.compare(ours.params, theirs.params)
    return Verdict(breaks + param_breaks, warnings)


def _parse(signature: Signature) -> ModelSignature:
    parsed: ModelSignature = ModelSignature.from_dict(dict(signature))
    return parsed

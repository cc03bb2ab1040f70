"""The admin REST API, behind a bearer token compared in constant time before the body is read.

Changes go through ``controller.commands`` (one transaction each); the new routing table is
published before the answer, so a 200 means the serving app is being told.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StringConstraints, model_validator

from controller import commands, dry_run, dry_run_proof
from controller.artifacts import ArtifactFacts
from controller.compatibility import Policy
from controller.decisions import load_failure_of
from controller.dry_run_source import CandidateRegistry, LocalFiles
from controller.environment import EnvironmentPolicy
from controller.environment_secrets import redacted_facts
from controller.exceptions import InvalidRequest, NotFound
from controller.guard import Gate
from controller.own_environments import where_served
from controller.proofs import proof_of
from controller.records import ModelRecord, Signature
from controller.registry_sync import ENVIRONMENT_TAG, POLICY_TAG
from controller.services import Services, services
from wire.problems import problem_response

# Checked before the body is read (controller.guard); the largest body here is an override's
# reason (500 characters), so 16 KiB leaves room for any escaping.
GATE = Gate("/admin", 16 * 1024, lambda settings: settings.admin_token, "admin")
router = APIRouter(prefix=GATE.prefix, max_body_size=GATE.max_body)


class PinDefault(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    # Make the version's signature the contract as well (clients may then send what it adds);
    # refused when it breaks the current contract. Without it the contract is kept.
    adopt_contract: bool = False
    # Pin even when the version breaks the current contract: its signature becomes the contract.
    force: bool = False


class Override(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class SetPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Policy | None = None
    environment: EnvironmentPolicy | None = None

    @model_validator(mode="after")
    def _something(self) -> SetPolicy:
        if self.policy is None and self.environment is None:
            raise ValueError(
                "set 'policy' (backward|exact|none), 'environment' (isolate|shared|off) or both"
            )
        return self


class LocalModel(BaseModel):
    """A model directory's small files, read by the CLI where the controller cannot."""

    model_config = ConfigDict(extra="forbid")
    mlmodel: Annotated[str, StringConstraints(min_length=1)]
    requirements: str | None = None
    python_env: str | None = None


class CheckArtifact(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # runs:/..., models:/..., an artifact location (controller.dry_run_source).
    source: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)
    ] | None = None
    local: LocalModel | None = None
    # Also prove it on its input example where it would be served (controller.dry_run_proof).
    prove: bool = False


def _summary(m: ModelRecord) -> dict[str, Any]:
    counts = {"live": 0, "quarantined": 0, "pending": 0}
    for v in m.versions.values():
        counts[v.state.value] += 1
    return {
        "name": m.name,
        "default_version": m.default_version,
        "policy": m.policy,
        "environment_policy": m.environment_policy,
        **counts,
    }


def structured(signature: Signature | None) -> dict[str, Any] | None:
    """MLflow's signature dict with its JSON-string parts parsed, so clients read JSON once."""
    if signature is None:
        return None
    return {k: json.loads(v) if isinstance(v, str) else v for k, v in signature.items()}


def _iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def _detail(m: ModelRecord, svc: Services) -> dict[str, Any]:
    return {
        "name": m.name,
        "default_version": m.default_version,
        "policy": m.policy,
        "environment_policy": m.environment_policy,
        "contract": structured(m.contract),
        "last_webhook_at": _iso(svc.last_webhook_at.get(m.name)),
        "last_version_webhook_at": _iso(svc.last_version_webhook_at.get(m.name)),
        "alias": {"name": svc.settings.default_alias, "version": m.alias_seen},
        "alias_refusal": m.alias_refusal,
        "registry_warning": m.registry_warning,
        "versions": [
            {
                "version": v.version,
                "state": v.state.value,
                "reasons": v.reasons,
                "warnings": v.warnings,
                "has_signature": v.signature is not None if v.signature_read else None,
                "decided_at": v.decided_at.isoformat() if v.decided_at else None,
                "source": v.source,
                "artifact_uri": v.artifact_uri,
                "mlmodel_digest": v.mlmodel_digest,
                "environment": redacted_facts(v.environment),
                # Where it is proven and served: {"kind": "shared"}, or its own environment
                # (kind layered|isolated, digest, requirements, reason, shared_failure).
                "served_in": where_served(v),
                "override": v.override,
                "load_failure": load_failure_of(v),
                # The proof on its input example, when one is recorded for this artifact.
                "proof": proof_of(v),
            }
            for v in m.sorted_versions()
        ],
    }


async def _changed(
    svc: Services, command: Callable[..., ModelRecord], *args: Any
) -> dict[str, Any]:
    """Run a change (one transaction), publish the table, answer the model as it now is."""
    decided = await asyncio.to_thread(command, *args)
    return await _published(svc, decided)


async def _published(svc: Services, decided: ModelRecord) -> dict[str, Any]:
    """The answer to a stored change, saying whether serving is being told yet."""
    published = await svc.publish_change(decided.name, "admin")
    return {**_detail(decided, svc), "published": published}


@router.get("/models")
async def list_models(svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
    models = await asyncio.to_thread(svc.store.all_models)
    listed = sorted((m for m in models if m.deleted_at is None), key=lambda m: m.name)
    return {"models": [_summary(m) for m in listed]}


@router.get("/models/{name}")
async def get_model(name: str, svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
    return _detail(await asyncio.to_thread(commands.load, svc.store, name), svc)


@router.put("/models/{name}/default")
async def pin_default(
    name: str, body: PinDefault, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any]:
    """Move the default; the contract is kept unless ``adopt_contract`` or ``force`` say
    otherwise (docs/architecture.md, "Pins and policy changes"). The answer says whether the
    contract changed and which versions it decided otherwise (``redecided``)."""
    pinned = await asyncio.to_thread(
        lambda: commands.pin_default(
            svc.store,
            name,
            body.version,
            svc.serving_environment,
            force=body.force,
            adopt_contract=body.adopt_contract,
        )
    )
    return {
        **await _published(svc, pinned.model),
        "contract_changed": pinned.contract_changed,
        "redecided": [asdict(r) for r in pinned.redecided],
    }


@router.put("/models/{name}/policy")
async def set_policy(
    name: str, body: SetPolicy, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any]:
    # The registry's tags win over the stored policy, so they are written first: a registry
    # that refuses is a 503 and nothing changes.
    await asyncio.to_thread(commands.load, svc.store, name)
    tags = {POLICY_TAG: body.policy, ENVIRONMENT_TAG: body.environment}
    for key, value in tags.items():
        if value is not None:
            await asyncio.to_thread(svc.registry.set_model_tag, name, key, value.value)
    decided = await asyncio.to_thread(
        lambda: commands.set_policies(
            svc.store,
            name,
            svc.serving_environment,
            compatibility=body.policy,
            environment=body.environment,
        )
    )
    return await _published(svc, decided)


@router.post("/models/{name}/versions/{version}/quarantine")
async def quarantine_version(
    name: str, version: str, body: Override, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any]:
    return await _changed(
        svc, commands.quarantine, svc.store, name, version, body.reason, svc.serving_environment
    )


@router.post("/models/{name}/versions/{version}/release")
async def release_version(
    name: str, version: str, body: Override, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any]:
    return await _changed(
        svc, commands.release, svc.store, name, version, body.reason, svc.serving_environment
    )


@router.delete("/models/{name}/versions/{version}/override")
async def remove_override(
    name: str, version: str, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any]:
    return await _changed(
        svc, commands.remove_override, svc.store, name, version, svc.serving_environment
    )


@router.get("/models/{name}/events")
async def model_events(
    name: str,
    svc: Annotated[Services, Depends(services)],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    """The model's audit log, newest first; ``next`` is the ``before`` of the next page."""
    events = await asyncio.to_thread(svc.store.events, name, limit=limit, before_id=before)
    unknown = not events and before is None
    if unknown and await asyncio.to_thread(svc.store.load_model, name) is None:
        # A model deleted from the registry keeps its record and its log; one never stored has
        # neither, and an empty log would hide a misspelt name.
        raise NotFound(f"registered model '{name}' is not known to sigserve")
    return {
        "events": [
            {
                "id": e.id,
                "at": e.at.isoformat() if e.at else None,
                "kind": e.kind,
                "version": e.version,
                "actor": e.actor,
                "before": e.before,
                "after": e.after,
            }
            for e in events
        ],
        "next": events[-1].id if len(events) == limit else None,
    }


@router.post("/models/{name}/check", response_model=None)
async def check_artifact(
    name: str, body: CheckArtifact, request: Request, svc: Annotated[Services, Depends(services)]
) -> dict[str, Any] | JSONResponse:
    """The gate's verdict on an artifact as the model's next version, with nothing written
    (``controller.dry_run``; docs/architecture.md, "Before registering: a dry run"); with
    ``prove``, its proof too, made by the serving app (``controller.dry_run_proof``)."""
    if (body.source is None) == (body.local is None):
        raise InvalidRequest("source", "give 'source' (a URI) or 'local' (a model's files), "
                             "one of them")  # fmt: skip
    settings, source, local = svc.settings, body.source, body.local
    token = settings.serving_token.get_secret_value() if settings.serving_token else None
    if body.prove:
        try:
            dry_run_proof.trials_url(settings.serving_url, token, local=local is not None)
        except dry_run_proof.CannotProve as exc:
            return _cannot_prove(request, exc)
    reader = CandidateRegistry(
        settings.mlflow_tracking_uri, artifact_sources=settings.artifact_sources
    )

    def read() -> ArtifactFacts:
        if source is not None:
            return reader.candidate(name, source)
        assert local is not None
        files = LocalFiles(local.mlmodel, local.requirements, local.python_env)
        return reader.local_candidate(name, files)

    result = await asyncio.to_thread(
        functools.partial(
            dry_run.check, name, read, store=svc.store, registry=svc.registry,
            settings=settings, env=svc.serving_environment,
        )
    )  # fmt: skip
    if body.prove:
        try:
            result = await dry_run_proof.prove(result, serving_url=settings.serving_url,
                                               token=token)  # fmt: skip
        except dry_run_proof.TrialFailed as exc:
            return problem_response(
                exc.status, slug="trial-unavailable", title="The proof could not be made",
                detail=f"cannot tell: {exc}", instance=request.url.path,
                retry_after=5 if exc.status == 503 else None,
            )  # fmt: skip
    return {
        "model": result.model,
        "source": source,
        "location": result.location if source is not None else None,
        "verdict": result.verdict.value,
        "would_be_version": result.version,
        "reasons": result.reasons,
        "warnings": result.warnings,
        "first_version": result.first_version,
        "contract": structured(result.contract),
        "policy": result.policy,
        "environment_policy": result.environment_policy,
        "notes": result.notes,
        # What the proof found, where it was made (None: not asked for, or not made).
        "proof": result.proof,
        "written": False,
    }


def _cannot_prove(request: Request, exc: dry_run_proof.CannotProve) -> JSONResponse:
    return problem_response(exc.status, slug=exc.slug, title="The dry run cannot be proven here",
                            detail=str(exc), instance=request.url.path)  # fmt: skip


@router.post("/models/{name}/reconcile", status_code=202)
async def reconcile_model(name: str, svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
    await svc.request_reconcile(name, "admin")
    return {"status": "queued", "models": [name]}


@router.post("/reconcile", status_code=202)
async def reconcile_all(svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
    await svc.request_resync()
    return {"status": "queued"}

"""Environments of their own: where a version the shared serving environment cannot serve is
proven and served (issue 17; docs/architecture.md, "Environments of their own"). Pure functions.

Under the environment policy ``isolate`` (the default) a version gets an environment of its own,
published as ``VersionEntry.environment`` (``wire.routing_table.EnvironmentSpec``), when

1. its requirements name a package the serving environment lacks: a *layered* environment, the
   missing requirements as the version pinned them installed on top of the serving environment
   (Ray, Serve, sigserve and their pandas and MLflow stay as they are). Nothing else goes into
   the layer: the version's other requirements are met by the serving environment or differ in
   version only, which the shared environment is trusted with as it is for any version
   (``controller.environment``); or
2. its proof (or its load) failed in the shared environment and it pins a version the serving
   environment does not have (one whose every requirement is met there failed on its own
   account: it is quarantined with the cause, as under ``shared``): built from the
   requirements the serving environment does not satisfy. *Layered* when those can be laid
   over the serving stack; *isolated* (a venv that inherits nothing, built from all the
   version's requirements, with the model in a host process of its own) when the version pins
   another major of MLflow, pandas or numpy, or another version of any other package the
   serving stack itself imports (``SERVING_STACK``): a layer would replace the replica's own
   copy under Ray and Serve. Another minor of MLflow, pandas or numpy is left out of a layer
   (the serving environment's copy of the same major stays); a layer left with nothing to add
   would fail as the shared environment did, so that is isolated too.

The spec's digest is the SHA-256 of its kind, its sorted normalized requirement lines and the
serving Python's minor, so every version with the same needs shares one environment. The
failure that sent a version there is kept with the assignment (``shared_failure``): the reason
a person sees while it is built and proven there, and the second cause when the proof in its
own environment fails too. A report counts only for the environment the version is assigned
(``counts``): one from the shared environment about a version that has its own is stale.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from controller.environment import EnvironmentVerdict, Mismatch, ServingEnvironment
from controller.records import VersionRecord
from wire.redaction import redact
from wire.routing_table import EnvironmentSpec

# Another *major* of these goes to an isolated environment; another minor stays shared.
STACK_MAJORS = frozenset({"mlflow", "pandas", "numpy"})
# What the serving replica itself imports (Ray Serve, the HTTP stack, MLflow's loading path,
# the wire models): another version of any of them cannot be layered under a running replica.
SERVING_STACK = frozenset(
    {
        "ray", "fastapi", "starlette", "uvicorn", "httpx", "pydantic", "pydantic-core",
        "pyarrow", "cloudpickle", "protobuf", "grpcio", "msgpack", "aiohttp", "requests",
        "packaging", "pyyaml", "typing-extensions", "prometheus-client", "tenacity",
        "python-json-logger", "sigserve",
    }
)  # fmt: skip
_BUILDING = "building its environment: "


def _name(req: Requirement) -> str:
    name = canonicalize_name(req.name)
    return "mlflow" if name == "mlflow-skinny" else name


def canonical_line(req: Requirement) -> str:
    """The requirement as pip reads it, its name canonicalized (PEP 503): equal needs, equal
    lines, whatever case or separators the version's file used."""
    normal = Requirement(str(req))
    normal.name = canonicalize_name(req.name)
    return str(normal)


def make_spec(
    kind: str, requirements: list[Requirement], env: ServingEnvironment, reason: str
) -> EnvironmentSpec:
    lines = sorted({canonical_line(r) for r in requirements})
    parts = env.python_version.split(".")
    blob = json.dumps(
        {"kind": kind, "requirements": lines, "python": ".".join(parts[:2])}, sort_keys=True
    )
    digest = hashlib.sha256(blob.encode()).hexdigest()
    return EnvironmentSpec.model_validate(
        {"digest": digest, "kind": kind, "requirements": lines, "reason": reason}
    )


def _conflict(m: Mismatch) -> str | None:
    """Why ``m`` cannot be laid over the serving stack, or None."""
    name = _name(m.requirement)
    if name in STACK_MAJORS and m.another_major:
        return (
            f"{m.requirement} is another major version than the serving environment's {m.installed}"
        )
    if name in SERVING_STACK:
        return f"{m.requirement} differs from the serving stack's own {name} {m.installed}"
    return None


def _layerable(m: Mismatch) -> bool:
    return _name(m.requirement) not in STACK_MAJORS


def failure_text(report: dict[str, Any]) -> str:
    what = "failed its proof" if "outcome" in report else "could not be loaded"
    return (
        f"{what} in the shared serving environment (replica {report.get('replica', '?')} at "
        f"{report.get('at', '?')}): {report.get('cause', '?')}"
    )


def assign(
    verdict: EnvironmentVerdict,
    env: ServingEnvironment,
    shared_failure: dict[str, Any] | None,
) -> EnvironmentSpec | None:
    """The environment of its own the version needs under ``isolate``; None: the shared one."""
    if verdict.missing:
        names = ", ".join(dict.fromkeys(r.name for r in verdict.missing))
        return make_spec(
            "layered", verdict.missing, env, f"needs {names}, which the serving environment lacks"
        )
    if shared_failure is None or not verdict.mismatched:
        # Every requirement is met by the serving environment as the version pinned it: the
        # failure is the model's own, and an environment built to the same pins would fail as
        # the shared one did. It quarantines, with its cause.
        return None
    reason = failure_text(shared_failure)
    conflicts = [c for c in map(_conflict, verdict.mismatched) if c is not None]
    layer = [m.requirement for m in verdict.mismatched if _layerable(m)]
    if not conflicts and layer:
        return make_spec("layered", layer, env, reason)
    why = "; ".join(conflicts) or (
        "every requirement it pins that differs is one of the serving stack's own, so a layer "
        "would add nothing"
    )
    return make_spec("isolated", verdict.requirements, env, f"{reason}; isolated: {why}")


def environment_digest(version: VersionRecord) -> str | None:
    """The digest of the environment the version is assigned; None: the shared one."""
    own = version.own_environment
    return own.get("digest") if own else None


def counts(report: dict[str, Any] | None, version: VersionRecord, digest: str | None) -> bool:
    """Whether ``report`` is about the version's artifact as it is in environment ``digest``."""
    return (
        report is not None
        and report.get("mlmodel_digest") == version.mlmodel_digest
        and report.get("environment_digest") == digest
    )


def stored(
    spec: EnvironmentSpec | None, shared_failure: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The assignment as ``VersionRecord.own_environment`` keeps it."""
    if spec is None:
        return None
    return {**spec.model_dump(), "shared_failure": shared_failure}


def environment_of(version: VersionRecord) -> EnvironmentSpec | None:
    """The environment the routing table gives the version (``table_builder``)."""
    own = version.own_environment
    if own is None:
        return None
    return EnvironmentSpec.model_validate({k: v for k, v in own.items() if k != "shared_failure"})


def building(spec: EnvironmentSpec) -> str:
    """The pending reason of a version waiting for its proof in its own environment."""
    return f"{_BUILDING}{spec.reason}; it is proven there before its first request"


def is_building(reason: str) -> bool:
    return reason.startswith(_BUILDING)


def served_from(spec: EnvironmentSpec) -> str:
    """The warning a version live in its own environment carries."""
    return f"served from an environment of its own ({spec.kind}, {spec.digest[:12]}): {spec.reason}"


def where_served(version: VersionRecord) -> dict[str, Any]:
    """Where the version is proven and served, for the admin API: ``shared``, or its own
    environment (kind, digest, requirement lines, why, and what failed in the shared one)."""
    spec = environment_of(version)
    if spec is None:
        return {"kind": "shared"}
    shared = (version.own_environment or {}).get("shared_failure")
    shown = spec.model_dump()
    # A spec stored before credentials were cut where lines are read may still hold one.
    shown["requirements"] = [redact(line) for line in shown.get("requirements") or []]
    return {**shown, "shared_failure": shared}

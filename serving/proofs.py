"""Proving a version before its first request: load it, call it on its own example, report.

The controller leaves a version that passed every check ``pending`` until a replica proves it
(``controller.proofs``; the guarantee: docs/architecture.md, "Proven before its first request").
The routing table marks such versions ``awaiting_proof`` and binds them to their artifact as it
binds a live one. A replica that sees one:

1. loads that artifact through its own load path (the loader's checks of source, MLmodel
   digest and manifest; a version that will be its model's default goes into the replica's
   multiplexer as the warm-up's loads do, so a proven default is also warm; any other that
   passes is handed to the multiplexer when it has a free slot, ``Keep``, so its first request
   loads nothing again). A load that fails is the loader's to report
   (``serving.load_reports``), and quarantines the version as before;
2. reads its example with MLflow's own helpers: ``serving_input_example.json``
   (``Model.get_serving_input``), parsed as a client's ``/invocations`` body is
   (``serving.scoring_protocol.parse``), else the logged ``input_example`` MLflow loaded with
   the model and its params (``Model.load_input_example_params``). Without either it was loaded
   and that is all: reported passed, "not exercised";
3. calls it on the example, under the deadline a request would have, and checks the answer
   against the version's output schema (``serving.frames.undeclared_columns``, which answers a
   client 500 otherwise) and that it converts to records as ``/serve`` would;
4. reports the outcome to the controller (``POST /serving/proofs``), which decides.

Bounded: one proof at a time per replica, in a background task, never on a request's path (the
version answers 503 meanwhile). Every replica may prove a version it sees; the controller keeps
the first report. A proof that could not be made or reported for the replica's own reasons (the
artifact store down, the controller unreachable, memory) is tried again with backoff; the
version stays pending meanwhile, never live unproven.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mlflow.models import ModelSignature

from serving.contract import parse_signature
from serving.environment_builds import EnvironmentBuildFailed
from serving.frames import to_records, undeclared_columns
from serving.load_faults import is_replicas_fault
from serving.loader import LoadedModel
from serving.resolve import Target, checked_artifact
from serving.scoring_protocol import JSON, parse, typed_inputs
from wire.routing_table import EnvironmentSpec, RoutingTable, VersionState

logger = logging.getLogger(__name__)

_CAUSE_LIMIT = 1000
# Backoff of a proof that could not be made or reported for the replica's own reasons.
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 60.0

# The model of a target, loaded: (target, whether it will be its model's default).
Load = Callable[[Target, bool], Awaitable[LoadedModel]]
# A version that passed, loaded beside the multiplexer (it will not be its model's default):
# whether the replica kept it loaded for its first request. Never at a loaded model's cost.
Keep = Callable[[Target, LoadedModel], Awaitable[bool]]


@dataclass(frozen=True)
class Proof:
    """What a replica found, as it reports it."""

    model: str
    version: str
    mlmodel_digest: str
    outcome: str  # "passed" | "failed"
    # False: no input example, so the version was loaded and not called.
    exercised: bool
    cause: str | None = None
    # The environment of its own it was proven in (``EnvironmentSpec.digest``); None: the
    # shared serving environment.
    environment_digest: str | None = None


class ReplicasFault(Exception):
    """The proof could not be made for a reason of the replica's own: try again later."""


@dataclass(frozen=True)
class Example:
    data: Any
    params: dict[str, Any] | None


def example_of(loaded: LoadedModel, signature: dict[str, str | None] | None) -> Example | None:
    """The version's own example, as a client would send it; None when it has none."""
    meta = loaded.model.metadata
    served = meta.get_serving_input(str(loaded.path))
    if served is not None:
        parsed = parse(
            served.encode(), JSON, parse_signature(signature), None, typed=typed_inputs(signature)
        )
        return Example(parsed.data, parsed.params)
    example = loaded.model.input_example
    if example is None:
        return None
    return Example(example, meta.load_input_example_params(str(loaded.path)))


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``: the cause a person needs, never a traceback."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text[:_CAUSE_LIMIT]


def exercise(loaded: LoadedModel, example: Example, signature: ModelSignature | None) -> str | None:
    """Call the model on ``example`` (it blocks); the cause of its failure, or None."""
    try:
        prediction = loaded.model.predict(example.data, params=example.params or None)
    except Exception as exc:
        if is_replicas_fault(exc):
            raise ReplicasFault(first_line(exc)) from exc
        return first_line(exc)
    outputs = signature.outputs if signature is not None else None
    extra = undeclared_columns(prediction, outputs)
    if extra:
        declared = ", ".join(repr(n) for n in (outputs.input_names() if outputs else []))
        listed = ", ".join(repr(c) for c in extra[:5]) + (" ..." if len(extra) > 5 else "")
        return (f"its answer to its own input example has column(s) {listed} that its output "
                f"schema lacks (it declares {declared})")[:_CAUSE_LIMIT]  # fmt: skip
    try:
        to_records(prediction, outputs)
    except Exception as exc:
        return f"its answer to its own input example cannot be sent as JSON: {first_line(exc)}"
    return None


@dataclass(frozen=True)
class Outcome:
    """Steps 2-3 on one loaded artifact: whether it passed, whether it was called at all (not
    without an example), and the cause of a failure."""

    passed: bool
    exercised: bool
    cause: str | None = None


def on_example(loaded: LoadedModel, signature: dict[str, str | None] | None) -> Outcome:
    """Steps 2-3 above: read the example of a loaded artifact whose own signature is
    ``signature``, call it on it and check the answer (it blocks: run it in a worker thread).
    ``ReplicasFault`` when it could not be told for a reason of the replica's own. The proof
    before a version's first request and the dry run's (``serving.trials``) both are this."""
    try:
        example = example_of(loaded, signature)
    except Exception as exc:
        if is_replicas_fault(exc):
            raise ReplicasFault(first_line(exc)) from exc
        return Outcome(False, True, f"its own input example cannot be read: {first_line(exc)}")
    if example is None:
        return Outcome(True, False)
    cause = exercise(loaded, example, parse_signature(signature))
    return Outcome(cause is None, True, cause)


def timed_out(timeout_s: float) -> str:
    """The cause of a proof whose call outlived its deadline."""
    return f"TimeoutError: it did not answer its own input example within {timeout_s:g} s"


def prove(loaded: LoadedModel, target: Target) -> Proof:
    """The proof of a loaded ``target`` (it blocks: run it in a worker thread)."""
    found = on_example(loaded, target.version.signature)
    return _proof(target, "passed" if found.passed else "failed", found.exercised, found.cause)


def _proof(target: Target, outcome: str, exercised: bool, cause: str | None) -> Proof:
    environment = target.artifact.environment
    return Proof(target.model.name, target.version.version,
                 target.artifact.mlmodel_digest.lower(), outcome, exercised, cause,
                 environment.digest if environment is not None else None)  # fmt: skip


def awaiting(table: RoutingTable) -> list[tuple[Target, bool]]:
    """The versions ``table`` asks replicas to prove, defaults first: a model whose default is
    being proven answers nobody meanwhile."""
    found = []
    for name, model in table.models.items():
        for version, entry in model.versions.items():
            if entry.state != VersionState.PENDING or not entry.awaiting_proof:
                continue
            if not entry.source or not entry.mlmodel_digest:
                continue  # nothing bound to load
            default = model.default_version == version
            found.append((Target(model, entry, checked_artifact(name, entry)), default))
    return sorted(found, key=lambda t: (not t[1], t[0].model.name, t[0].version.version))


Report = Callable[[Proof], Awaitable[bool]]


class Builds(Protocol):
    """Builds environments of a version's own (``serving.environments``)."""

    async def build(self, spec: EnvironmentSpec) -> None:
        """Return once built; raise ``EnvironmentBuildFailed`` with the cause otherwise."""
        ...


class Prover:
    """Proves, one at a time, the versions the latest table offered awaits proof of."""

    def __init__(
        self,
        load: Load,
        report: Report,
        *,
        timeout_s: Callable[[Target], float],
        clock: Callable[[], float] = time.monotonic,
        retry_first_s: float = RETRY_FIRST_S,
        retry_max_s: float = RETRY_MAX_S,
        environments: Builds | None = None,
        keep: Keep | None = None,
    ) -> None:
        self._load = load
        self._environments = environments
        self._keep = keep
        self._report = report
        self._timeout_s = timeout_s
        self._clock = clock
        self._retry_first_s = retry_first_s
        self._retry_max_s = retry_max_s
        self._table: RoutingTable | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Model ids proven and reported by this replica (the controller has them).
        self._done: set[str] = set()
        # Proofs made and not yet reported: sent again, not made again.
        self._unsent: dict[str, Proof] = {}
        # Model id -> (when to try again, failures in a row).
        self._later: dict[str, tuple[float, int]] = {}

    @property
    def done(self) -> set[str]:
        return set(self._done)

    def offer(self, table: RoutingTable) -> None:
        """The latest table this replica took (called on its event loop)."""
        self._table = table
        if any(True for _ in awaiting(table)):
            self._changed.set()
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(
                    self._run(), name="sigserve-proofs"
                )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _next(self) -> tuple[Target, bool] | float | None:
        """The next version to prove; else how long until one may be tried again; else None."""
        now, wait = self._clock(), None
        for target, default in awaiting(self._table) if self._table is not None else []:
            key = target.model_id
            if key in self._done:
                continue
            at = self._later.get(key, (0.0, 0))[0]
            if at <= now:
                return target, default
            wait = at - now if wait is None else min(wait, at - now)
        return wait

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            chosen = self._next()
            if chosen is None:
                return  # nothing awaits; the next table with something starts another run
            if isinstance(chosen, float):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), chosen)
                continue
            try:
                await self._one(*chosen)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("proving %s failed unexpectedly", chosen[0].model_id)
                self._again(chosen[0].model_id)

    async def _one(self, target: Target, default: bool) -> None:
        key = target.model_id
        proof = self._unsent.get(key)
        if proof is None:
            proof = await self._make(target, default)
            if proof is None:
                self._again(key)
                return
        if await self._report(proof):
            self._unsent.pop(key, None)
            self._later.pop(key, None)
            self._done.add(key)
            return
        self._unsent[key] = proof
        self._again(key)

    async def _make(self, target: Target, default: bool) -> Proof | None:
        key = target.model_id
        started = self._clock()
        environment = target.artifact.environment
        if environment is not None:
            # Built first, here in the background: the load below (through the multiplexer
            # for a default) then never waits for a build (``serving.environments``).
            if self._environments is None:
                logger.warning("cannot prove %s: this replica builds no environments", key)
                return None
            try:
                await self._environments.build(environment)
            except EnvironmentBuildFailed as exc:
                return _proof(target, "failed", False, exc.cause)
            except Exception as exc:
                logger.warning("could not build the environment of %s: %s", key, str(exc)[:300])
                return None
        try:
            loaded = await self._load(target, default)
        except Exception as exc:
            # The loader reported it if it was the artifact's fault: the controller
            # quarantines it and the next table no longer asks. Otherwise: again, later.
            logger.warning("could not load %s to prove it: %s", key, str(exc)[:300])
            return None
        kept = default
        try:
            timeout = self._timeout_s(target)
            proof = await asyncio.wait_for(asyncio.to_thread(prove, loaded, target), timeout)
            if not kept and proof.outcome == "passed" and self._keep is not None:
                kept = await self._keep(target, loaded)
        except TimeoutError:
            proof = _proof(target, "failed", True, timed_out(timeout))
        except ReplicasFault as exc:
            logger.warning("could not prove %s on this replica: %s", key, exc)
            return None
        finally:
            if not kept:
                loaded.close()  # not to be served yet: its files go now (see LoadedModel)
        logger.info(
            "proved %s in %.0f ms: %s%s", key, (self._clock() - started) * 1000, proof.outcome,
            f" ({proof.cause})" if proof.cause else ("" if proof.exercised else " (no example)"),
            extra={"event": "proof", "model": proof.model, "version": proof.version,
                   "outcome": proof.outcome, "exercised": proof.exercised},
        )  # fmt: skip
        return proof

    def _again(self, key: str) -> None:
        failures = self._later.get(key, (0.0, 0))[1] + 1
        wait = min(self._retry_first_s * 2 ** (failures - 1), self._retry_max_s)
        self._later[key] = (self._clock() + wait, failures)

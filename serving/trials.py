"""The dry run's proof (``sigserve check --prove``): an artifact nobody registered yet, proven on
the replica that takes the trial, with nothing of it kept.

The controller POSTs ``/-/trials`` (``TRIALS_PATH``) with the serving token: the artifact's
source and MLmodel digest as the controller read them (and its manifest), its own signature,
the environment of its own it would be served in (None: the shared one) and the deadlines. The
replica:

1. builds that environment if it has one (environments are shared by digest, so a version
   registered later finds it built; no table names it, so it goes once untouched for
   ``SIGSERVE_ENVIRONMENT_IDLE_TTL_S``, and with 0 never, as any environment), then loads
   the artifact through the loader's own path
   (``serving.loader.download_and_load`` here, ``serving.environments`` in its own one: the
   same source, digest and manifest checks), but beside the multiplexer, never in its LRU: a
   scratch load, its files removed once the trial is answered. Nothing is reported to the
   controller (a load failure here quarantines nothing) and nothing is remembered for requests;
2. runs steps 2-3 of the proof before a first request, the same function
   (``serving.proofs.on_example``), under the model's predict deadline;
3. answers ``{"outcome": "passed" | "failed" | "not_exercised", "exercised", "cause",
   "failure", "environment_digest", "replica", "elapsed_ms"}``: ``failure`` is ``load-failed``
   or ``artifact-mismatch`` when the load failed for the artifact's reasons (the gate hears
   that as a replica's load-failure report, not as a proof), None otherwise. The cause is
   ``Type: first line``, never a traceback.

What the replica cannot tell for reasons of its own (the artifact store down, memory, a load
past the trial's deadline) is a problem, not an outcome: 503 or 504, and the controller says it
cannot tell. Bounded: one trial at a time per replica (a second is 503 + Retry-After; a predict
that outlives its deadline keeps the replica busy until it returns, a thread cannot be
stopped), the body at most ``MAX_BODY_BYTES``, the whole trial within its ``timeout_s`` (at most
``MAX_TIMEOUT_S``); the token is checked before the body is read (401 without it).
docs/architecture.md, "Before registering: a dry run".
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.bodies import parse_json, read_body
from serving.environment_builds import EnvironmentBuildFailed
from serving.exceptions import (
    InvalidInput,
    TrialBusy,
    TrialRefused,
    TrialTimeout,
    TrialUnavailable,
)
from serving.loader import LoadedModel, LoadFailed, NotChecked, download_and_load
from serving.model_ids import Artifact
from serving.proofs import Outcome, ReplicasFault, first_line, on_example, timed_out
from wire.artifact_manifest import ManifestFile
from wire.routing_table import EnvironmentSpec

logger = logging.getLogger(__name__)

TRIALS_PATH = "/-/trials"
# A manifest of the most files the controller lists (10,000) with long paths fits.
MAX_BODY_BYTES = 4 * 1024 * 1024
# The longest trial taken: an environment's build, a download and a load, and the call.
MAX_TIMEOUT_S = 1800.0


class Trial(BaseModel):
    """What the controller asks a replica to prove."""

    model_config = ConfigDict(extra="forbid")

    # The registered model it would be a version of, for the replica's log.
    model: str = Field(min_length=1, max_length=500)
    source: str = Field(min_length=1, max_length=2000)
    mlmodel_digest: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    manifest: list[ManifestFile] | None = None
    # ``ModelSignature.to_dict()``: what its example is parsed and its answer checked with.
    signature: dict[str, str | None] | None = None
    environment: EnvironmentSpec | None = None
    # The model's ``sigserve.predict_timeout_s``; None: the replica's default.
    predict_timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    timeout_s: float = Field(gt=0, le=MAX_TIMEOUT_S)

    def artifact(self) -> Artifact:
        manifest = tuple(self.manifest) if self.manifest is not None else None
        return Artifact(self.source, self.mlmodel_digest, manifest, self.environment)


class Environments(Protocol):
    """Builds and loads in environments of a version's own (``serving.environments``)."""

    async def build(self, spec: EnvironmentSpec) -> None: ...

    async def load(self, artifact: Artifact) -> LoadedModel: ...


Load = Callable[[Artifact], Awaitable[LoadedModel]]


@dataclass(frozen=True)
class LoadFailure:
    """A load that failed for the artifact's reasons, as the loader would report it."""

    kind: str  # "load-failed" | "artifact-mismatch"
    cause: str


class Trials:
    """The replica's side of ``POST /-/trials``; one trial at a time."""

    def __init__(
        self,
        token: str | None,
        *,
        predict_timeout_s: float,
        replica: str = "",
        environments: Environments | None = None,
        load: Load | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token = token
        self._predict_timeout_s = predict_timeout_s
        self._replica = replica
        self._environments = environments
        self._load = load if load is not None else self._scratch_load
        self._clock = clock
        # Work of a trial still running (its build, load or call), the last one's included
        # when it outlived its deadline: the replica takes no other trial meanwhile.
        self._running: set[asyncio.Future[Any]] = set()

    @property
    def busy(self) -> bool:
        return bool(self._running)

    async def answer(self, request: Request) -> dict[str, Any]:
        self._authorize(request.headers.get("authorization"))
        trial = _parse(await read_body(request, MAX_BODY_BYTES))
        if self.busy:
            raise TrialBusy("this replica is proving another artifact; try again")
        started = self._clock()
        work = asyncio.ensure_future(self._run(trial, started + trial.timeout_s))
        self._hold(work)
        try:
            found = await asyncio.wait_for(asyncio.shield(work), trial.timeout_s)
        except TimeoutError:
            raise TrialTimeout(
                f"{trial.source} could not be loaded and called within {trial.timeout_s:g} s "
                "on this replica"
            ) from None
        elapsed_ms = round((self._clock() - started) * 1000)
        failure = found.kind if isinstance(found, LoadFailure) else None
        outcome = Outcome(False, False, found.cause) if isinstance(found, LoadFailure) else found
        result = ("not_exercised" if outcome.passed and not outcome.exercised
                  else "passed" if outcome.passed else "failed")  # fmt: skip
        logger.info(
            "trial of %s for %r in %d ms: %s%s", trial.source, trial.model, elapsed_ms, result,
            f" ({outcome.cause})" if outcome.cause else "",
            extra={"event": "trial", "model": trial.model, "outcome": result},
        )  # fmt: skip
        environment = trial.environment
        return {
            "outcome": result,
            "exercised": outcome.exercised,
            "cause": outcome.cause,
            "failure": failure,
            "environment_digest": environment.digest if environment is not None else None,
            "replica": self._replica,
            "elapsed_ms": elapsed_ms,
        }

    def _authorize(self, header: str | None) -> None:
        scheme, _, given = (header or "").partition(" ")
        if (
            self._token is None
            or scheme.lower() != "bearer"
            or not hmac.compare_digest(given.strip().encode(), self._token.encode())
        ):
            error = TrialRefused("a trial needs the serving token (Authorization: Bearer ...)")
            error.headers["WWW-Authenticate"] = "Bearer"
            raise error

    def _hold(self, work: asyncio.Future[Any]) -> None:
        self._running.add(work)
        work.add_done_callback(self._done)

    def _done(self, work: asyncio.Future[Any]) -> None:
        self._running.discard(work)
        if not work.cancelled():
            work.exception()  # raised to a trial answered 504 meanwhile: nobody else reads it

    async def _run(self, trial: Trial, deadline: float) -> Outcome | LoadFailure:
        loaded = await self._prepare(trial)
        if isinstance(loaded, Outcome | LoadFailure):
            return loaded
        if self._clock() >= deadline:  # the trial was answered 504 while it loaded
            loaded.close()
            return Outcome(False, False, "the trial ended before its load did")
        timeout = min(trial.predict_timeout_s or self._predict_timeout_s,
                      max(deadline - self._clock(), 0.001))  # fmt: skip
        call = asyncio.ensure_future(asyncio.to_thread(on_example, loaded, trial.signature))
        self._hold(call)
        # Its files go once the call is over, whenever that is (``LoadedModel``).
        call.add_done_callback(lambda _: loaded.close())
        try:
            return await asyncio.wait_for(asyncio.shield(call), timeout)
        except TimeoutError:
            return Outcome(False, True, timed_out(timeout))
        except ReplicasFault as exc:
            raise TrialUnavailable(f"could not call it on this replica: {exc}") from None

    async def _prepare(self, trial: Trial) -> LoadedModel | Outcome | LoadFailure:
        """The artifact, loaded beside the multiplexer; or what failed when it is the
        artifact's fault (an environment that cannot be built fails its proof, as the prover
        reports it; a load, as the loader reports it)."""
        artifact = trial.artifact()
        if artifact.environment is not None:
            if self._environments is None:
                raise TrialUnavailable("this replica builds no environments of a version's own")
            try:
                await self._environments.build(artifact.environment)
            except EnvironmentBuildFailed as exc:
                return Outcome(False, False, exc.cause)
            except Exception as exc:
                raise TrialUnavailable(
                    f"could not build its environment: {first_line(exc)}"
                ) from None
        try:
            return await self._load(artifact)
        except NotChecked as exc:
            return LoadFailure("artifact-mismatch", _line(exc.reason))
        except LoadFailed as exc:
            if not exc.permanent:
                raise TrialUnavailable(f"could not load it on this replica: {_line(str(exc))}"
                                       ) from None  # fmt: skip
            return LoadFailure("load-failed", _line(str(exc)))

    async def _scratch_load(self, artifact: Artifact) -> LoadedModel:
        """The loader's load of ``artifact`` (``PyfuncLoader``'s, without its memory of
        failures, its report and the multiplexer)."""
        if artifact.environment is None:
            return await asyncio.to_thread(download_and_load, artifact)
        assert self._environments is not None  # _prepare refused it otherwise
        return await self._environments.load(artifact)


def install(app: FastAPI, trials: Trials) -> None:
    """Add ``POST /-/trials`` to the serving app (left out of its OpenAPI: not a client's)."""

    @app.post(TRIALS_PATH, include_in_schema=False)
    async def trial(request: Request) -> dict[str, Any]:
        return await trials.answer(request)


def _line(text: str) -> str:
    """The first line of a cause, bounded: a load's message may carry a whole traceback."""
    lines = text.strip().splitlines()
    return (lines[0] if lines else text)[:1000]


def _parse(raw: bytes) -> Trial:
    try:
        return Trial.model_validate(parse_json(raw))
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "reason": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
        raise InvalidInput(f"the trial does not fit: {detail}", errors=errors) from None

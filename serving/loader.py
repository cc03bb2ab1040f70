"""Loading the exact artifact the controller checked; no Ray in here (``serving.predict_call``
calls it).

A decision in the routing table is bound to an artifact: its ``source`` (an artifact URI MLflow
can download), the SHA-256 of its ``MLmodel`` file as the controller read it, and the manifest
of all its files (``wire.artifact_manifest``: path, size, SHA-256 up to a limit). The loader
downloads ``source`` into a fresh directory, hashes the ``MLmodel`` it got, compares the whole
tree with the manifest (no file more, none missing, sizes and hashes equal) and loads that same
directory only if all of it is what was decided; anything else is refused (503) and recorded.
A version decided before manifests has none, and only its ``MLmodel`` is checked.
Loading by ``models:/{name}/{version}`` would follow whatever the name points at today, and a
model deleted and registered again reuses its version numbers.

The multiplexed model id names the artifact as well as the version (``serving.model_ids``), so
a replica still holding an older artifact of the same name/version loads the new one under a
new id and the old one ages out of its LRU.

A loaded model is moved out of the garbage collector's sight (``gc.freeze``): a model such as
MiniLM brings millions of objects, and every full collection of a replica that holds it would
walk them all, a pause of ~200 ms that showed as the p99 of every request. Freezing is a splice
of lists, not a collection (a ``gc.collect()`` first put ~100 ms on the first request to every
new version); garbage that happened to be waiting is frozen too, until the heap is unfrozen.
Reference counting still frees a model when it is evicted; the heap is unfrozen then, so the
next full collection finds whatever cycles it left, and the next load freezes again.

A load that fails is answered from memory for a while (``serving.failed_loads``, the
``Retry-After`` of its 503): without that, every request to a broken version downloads and loads
it again, one after another, holding back every other model's loads on the replica. Whose fault
it was decides what follows (``serving.load_faults``): the artifact's (it cannot be unpickled,
an import the image lacks, no pyfunc flavor, not the checked MLmodel) is reported to the
controller, which quarantines the version; the replica's (memory, disk, network, a timeout) is
never reported and is tried again with backoff. A model's default is reported only when a second
load from a fresh download fails too (``load(confirm=True)``). Its cause is told as
``Type: message``, with the replica's download directory replaced by the artifact's source: the
client needs the file, not the replica's temp path.

A load happens before Ray's multiplexer is asked for the model, not inside its loader: the
multiplexer evicts its least recently used model before it calls the loader, so a download
that fails (the artifact store down) or a broken pickle would cost a loaded model on every try.
Loading ahead was chosen over an LRU of our own, which would have to redo what the multiplexer
tells Ray's router; the price is one model more than the limit while one loads
(``serving.load_ahead``; ``docs/architecture.md``, "A load never costs a loaded model").

A version the table gives an environment of its own (``Artifact.environment``) is not loaded
in this interpreter: ``PyfuncLoader`` hands it to its ``environments``
(``serving.environments``), where the same ``download_and_load`` runs inside that environment
and the replica gets a model whose ``predict`` goes there; its failures come back as the same
``NotChecked`` and ``LoadFailed`` and are remembered and reported as a load here is. The
environment is part of the key: moved to an environment of its own, a version is another model.

Downloading, loading and predicting block (file and network I/O, model code), so they run in a
worker thread and the replica keeps serving other models meanwhile. MLflow finds the registry
and artifact store through the standard ``MLFLOW_*`` variables, which ``build_app`` forwards to
the model replicas.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import shutil
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict

import mlflow.artifacts
import mlflow.pyfunc

from serving.exceptions import ModelUnavailable
from serving.failed_loads import FailedLoads
from serving.load_faults import is_replicas_fault
from serving.model_dirs import new_model_dir
from serving.model_ids import Artifact, ModelId, bind
from wire.artifact_manifest import differences

logger = logging.getLogger(__name__)
# How many load attempts and refusals a replica remembers.
_MEMORY = 1000

_DETAIL_LIMIT = 500
# What a detail shows of a digest: enough for a person to tell two apart.
_SHORT_DIGEST = 12
# How long a failed load is answered from memory instead of tried again.
FAILED_LOAD_MEMORY_S = float(ModelUnavailable.retry_after or 5)
# The longest a failure of the replica's own (memory, disk, network) is answered from memory.
FAILED_LOAD_MEMORY_MAX_S = 60.0


def detail(text: str) -> str:
    return text[:_DETAIL_LIMIT]


class Refusal(TypedDict):
    model_id: str
    source: str
    reason: str


class LoadedModel:
    """A pyfunc model and the directory it was loaded from, removed once the model is gone.

    The directory goes with the last reference (a ``weakref.finalize``), not with an explicit
    ``__del__``: Ray's multiplexer calls ``__del__`` eagerly on eviction, while a request may
    still be predicting with the model, and a model may read its files after loading. Dropped
    from the LRU and from every request, the wrapper is freed at once (reference counting), so
    the old artifact leaves the disk with its eviction.
    """

    def __init__(
        self,
        model: Any,
        directory: Path,
        path: Path | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.directory = directory
        # The model's own directory inside ``directory`` (where its MLmodel is): what MLflow's
        # helpers read its input examples from (``serving.proofs``).
        self.path = path if path is not None else directory
        # ``release``: what else goes with it (a model held for it in an environment of its
        # own, ``serving.environments``).
        self._remove = weakref.finalize(self, _forget, directory, release)

    def close(self) -> None:
        """Remove the directory now; safe to call again, and done anyway when freed."""
        self._remove()


def _forget(directory: Path, release: Callable[[], None] | None = None) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    if release is not None:
        try:
            release()
        except Exception:  # a finalizer must not raise; the environment lets go of it anyway
            logger.exception("could not release a model held in its environment")
    # The evicted model's objects were frozen with everything else; let the collector see them.
    gc.unfreeze()


def _freeze_heap() -> None:
    gc.freeze()


class Environments(Protocol):
    """Where versions with an environment of their own are loaded (``serving.environments``)."""

    async def load(self, artifact: Artifact) -> LoadedModel:
        """``artifact`` loaded in its environment, the loader's checks made there; raises
        ``NotChecked`` or ``LoadFailed`` as a load here would."""
        ...


class NotChecked(Exception):
    """The download is not the artifact the controller checked; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LoadFailed(Exception):
    """A download or load that raised, told in terms of the artifact (see ``_cause``).

    ``permanent``: the artifact was downloaded and is what cannot be loaded (the artifact's
    fault, ``serving.load_faults``), so trying again gets the same. A failed download (MLflow
    or the artifact store down), or a load that ran out of memory, disk or network, may pass.
    """

    def __init__(self, cause: str, *, permanent: bool) -> None:
        super().__init__(cause)
        self.permanent = permanent


@dataclass(frozen=True)
class LoadFailure:
    """A load that cannot pass by itself, as a replica reports it to the controller."""

    model: str
    version: str
    mlmodel_digest: str
    # ``load-failed`` (downloaded, could not load) or ``artifact-mismatch`` (another MLmodel,
    # or files other than the manifest's).
    kind: str
    cause: str
    # The environment of its own it failed in (``EnvironmentSpec.digest``); None: the shared
    # serving environment. The controller counts a report only for the environment it assigned.
    environment_digest: str | None = None


class PyfuncLoader:
    """Loads artifacts on demand and remembers every load it tried and every one it refused.

    Attempts, not successes, are what is remembered: "a quarantined version is never loaded"
    must hold for a load that failed too. A load that failed (or was refused) is not tried again
    for a while: ``check`` and ``load`` raise its error again meanwhile, with what is left of
    the while as its ``Retry-After``. The while is ``remember_failures_s`` for a failure of the
    artifact (reported: the controller's 409 ends it), and for the replica's own failures it
    doubles with each one in a row up to ``max_remember_failures_s``, until a load passes.
    """

    def __init__(
        self,
        *,
        remember_failures_s: float = FAILED_LOAD_MEMORY_S,
        max_remember_failures_s: float = FAILED_LOAD_MEMORY_MAX_S,
        clock: Callable[[], float] = time.monotonic,
        on_permanent_failure: Callable[[LoadFailure], None] | None = None,
        environments: Environments | None = None,
    ) -> None:
        # Bounded: a long-running replica keeps the latest, which is what anyone reads.
        self._attempts: deque[str] = deque(maxlen=_MEMORY)
        self._refusals: deque[Refusal] = deque(maxlen=_MEMORY)
        self._failed_loads = FailedLoads(
            base_s=remember_failures_s, max_s=max_remember_failures_s, clock=clock
        )
        # Told of each failure that trying again would not mend (the controller hears of it).
        self._on_permanent_failure = on_permanent_failure
        self._environments = environments

    @property
    def attempts(self) -> list[str]:
        return list(self._attempts)

    @property
    def refusals(self) -> list[Refusal]:
        return list(self._refusals)

    def check(self, value: str) -> None:
        """Raise the error of a load of ``value`` that failed less than a while ago, if any."""
        self._failed_loads.check(value)

    async def load(self, value: str, artifact: Artifact, *, confirm: bool = False) -> LoadedModel:
        """Download ``artifact``, check its ``MLmodel`` digest and load it.

        ``confirm``: a failure of the artifact is reported only if a second load, from a fresh
        download, fails too. Set for a model's default version: its quarantine takes the whole
        endpoint out until someone releases it, so one bad download or one unlucky load must
        not cause it, and a deployment of one replica has no other replica to agree.
        """
        target = bind(value, artifact)
        self.check(value)
        outcome = await self._attempt(target, artifact)
        if isinstance(outcome, _Failure) and outcome.report is not None and confirm:
            logger.warning(
                "%s, the default of %r, failed to load (%s); loading a fresh download before "
                "reporting it",
                value,
                target.name,
                outcome.report.cause,
            )
            outcome = await self._attempt(target, artifact)
        if isinstance(outcome, _Failure):
            raise self._failed(value, outcome)
        self._failed_loads.passed(value)
        logger.info("loaded %s from %s", value, artifact.source)
        _freeze_heap()
        return outcome

    async def _attempt(self, target: ModelId, artifact: Artifact) -> LoadedModel | _Failure:
        self._attempts.append(str(target))
        try:
            if artifact.environment is None:
                return await asyncio.to_thread(download_and_load, artifact)
            if self._environments is None:
                raise LoadFailed(
                    "this replica serves no environments of a version's own", permanent=False
                )
            return await self._environments.load(artifact)
        except NotChecked as mismatch:
            reason = mismatch.reason
            self._refusals.append(
                Refusal(model_id=str(target), source=artifact.source, reason=reason)
            )
            logger.error("refused to load %s: %s", target, reason)
            return _Failure(
                detail(f"version {target.version} of {target.name!r} was not loaded: {reason}"),
                target,
                _failure(target, artifact, "artifact-mismatch", reason),
            )
        except LoadFailed as exc:
            logger.exception("loading %s from %s failed", target, artifact.source)
            return _Failure(
                detail(f"version {target.version} of {target.name!r} could not be loaded: {exc}"),
                target,
                _failure(target, artifact, "load-failed", str(exc)) if exc.permanent else None,
            )

    def _failed(self, value: str, failure: _Failure) -> ModelUnavailable:
        target = failure.target
        error = self._failed_loads.failed(
            value,
            failure.detail,
            replicas_fault=failure.report is None,
            model=target.name,
            version=target.version,
        )
        if failure.report is not None:
            self._report(failure.report)
        return error

    def _report(self, failure: LoadFailure) -> None:
        if self._on_permanent_failure is None:
            return
        try:
            self._on_permanent_failure(failure)
        except Exception:
            # Reporting is a courtesy to the controller; the client's 503 must not depend on it.
            logger.exception(
                "could not report the failed load of %s/%s", failure.model, failure.version
            )


@dataclass(frozen=True)
class _Failure:
    detail: str
    target: ModelId
    # What the controller is told; None for the replica's own failures, which are not reported.
    report: LoadFailure | None


def _failure(target: ModelId, artifact: Artifact, kind: str, cause: str) -> LoadFailure:
    environment = artifact.environment.digest if artifact.environment is not None else None
    return LoadFailure(
        target.name, target.version, artifact.mlmodel_digest.lower(), kind, detail(cause),
        environment,
    )  # fmt: skip


def download_and_load(
    artifact: Artifact,
    load_model: Callable[[Path], Any] = lambda local: mlflow.pyfunc.load_model(str(local)),
) -> LoadedModel:
    """Download ``artifact``, check it and load it with ``load_model`` (MLflow's pyfunc here;
    a model host of its own in an environment that inherits nothing,
    ``serving.environment_isolated``)."""
    # A fresh directory per load: the bytes hashed are the bytes loaded, and nothing left by
    # another load (of an older artifact of the same version, say) can be mixed in.
    directory = new_model_dir()  # what a replica that dies leaves goes later: serving.model_dirs
    local = directory
    try:
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=artifact.source, dst_path=str(directory)
                )
            )
        except Exception as exc:
            raise LoadFailed(
                _cause(exc, artifact.source, local, directory), permanent=False
            ) from exc
        _check(local, artifact)
        return LoadedModel(load_model(local), directory, local)
    except BaseException as exc:
        shutil.rmtree(directory, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, NotChecked | LoadFailed):
            raise LoadFailed(
                _cause(exc, artifact.source, local, directory),
                permanent=not is_replicas_fault(exc),
            ) from exc
        raise


def _check(local: Path, artifact: Artifact) -> None:
    """Raise ``NotChecked`` unless the tree at ``local`` is the artifact that was checked."""
    found = hashlib.sha256((local / "MLmodel").read_bytes()).hexdigest()
    if found != artifact.mlmodel_digest.lower():
        raise NotChecked(
            f"the MLmodel of {artifact.source} has digest {found[:_SHORT_DIGEST]}, "
            f"not {artifact.mlmodel_digest[:_SHORT_DIGEST]} the controller checked"
        )
    if artifact.manifest is None:
        return  # decided before manifests: the MLmodel is all that was bound
    differ = differences(local, artifact.manifest)
    if differ:
        raise NotChecked(
            f"the files of {artifact.source} are not the ones the controller checked "
            f"({'; '.join(differ)})"
        )


def _cause(exc: Exception, source: str, *copies: Path) -> str:
    """``Type: message``, each of this replica's ``copies`` of the artifact named by its source.

    The type often is the cause ("UnpicklingError: pickle data was truncated"), and a path in
    the replica's temp directory means nothing to a client, where the artifact's does.
    """
    text = f"{type(exc).__name__}: {exc}"
    for copy in copies:
        text = text.replace(str(copy), source.rstrip("/"))
    return text

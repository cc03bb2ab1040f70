"""Both ends of a version served from an environment of its own; no Ray in here.

``EnvironmentHost`` runs inside the environment (the body of its Ray actor,
``serving.environments``): it loads artifacts with the loader's own download and checks
(``serving.loader.download_and_load``: source, ``MLmodel`` digest, manifest) and predicts.
``EnvironmentModel`` is what a replica holds instead of a pyfunc model: ``predict`` sends the
input to the host and returns its answer, and ``metadata`` and ``input_example`` are read from
the copies of the artifact's ``MLmodel`` and example files the host sent back, so ``ModelHost``,
batching, the warm-up and the proof use it as they use a model loaded here.

Everything crosses as data (``serving.environment_codec``), errors too
(``serving.environment_errors``).

One model per artifact is held in the host, however many replicas hold it: each replica's
``LoadedModel`` is a holder, and the model goes when its last holder lets go (or with the
environment). A replica that dies without letting go leaves its hold until the environment goes.

An environment no replica has touched for ``idle_ttl_s`` goes by itself (``_reaped``): replicas
whose table names it touch it periodically (``serving.environments``), so one that outlived
every replica (the app deleted, ``sigserve up`` stopped with Ray kept, replicas scaled away) is
not left running for good. A host process that is down answers ``HostUnavailable``, a 503 on
the replica (``EnvironmentUnavailable``), never the model's own 500.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.models import Model

from serving.environment_codec import Encoded, decode, encode
from serving.environment_errors import HostUnavailable, error_record, raise_error
from serving.loader import LoadedModel, LoadFailed, NotChecked, download_and_load
from serving.model_dirs import new_model_dir
from serving.model_ids import Artifact
from wire.artifact_manifest import ManifestFile
from wire.routing_table import EnvironmentSpec

logger = logging.getLogger(__name__)

# The input example files MLflow names in ``saved_input_example_info``.
_EXAMPLE_KEYS = ("artifact_path", "serving_input_path")

# A request to the host: (model key, encoded input, params) -> encoded answer or error.
Send = Callable[[Encoded, dict[str, Any] | None], Encoded]
# Any other method of the host, by name: a stream's ``stream`` (input, params; the model's key
# is the caller's to add), ``next_chunk`` and ``end_stream`` (the stream's id).
Call = Callable[..., Encoded]
# How often an environment with an idle TTL looks at its last touch, at most.
_IDLE_CHECK_S = 30.0


def artifact_record(artifact: Artifact) -> dict[str, Any]:
    """``artifact`` as JSON values, for the host."""
    return {
        "source": artifact.source,
        "mlmodel_digest": artifact.mlmodel_digest,
        "manifest": None
        if artifact.manifest is None
        else [f.model_dump(mode="json") for f in artifact.manifest],
        "environment": None
        if artifact.environment is None
        else artifact.environment.model_dump(mode="json"),
    }


def artifact_from(record: dict[str, Any]) -> Artifact:
    manifest = record["manifest"]
    environment = record["environment"]
    return Artifact(
        record["source"],
        record["mlmodel_digest"],
        None if manifest is None else tuple(ManifestFile.model_validate(f) for f in manifest),
        None if environment is None else EnvironmentSpec.model_validate(environment),
    )


@dataclass
class _Held:
    loaded: LoadedModel
    holders: set[str] = field(default_factory=set)


class EnvironmentHost:
    """The models of one environment, in its own process (the actor's body)."""

    def __init__(
        self,
        digest: str,
        isolated: dict[str, Any] | None = None,
        *,
        idle_ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``isolated``: for an environment that inherits nothing, its spec (JSON), the package
        index (``index``: uv options and variables) and ``timeout_s``; its venv is built here,
        and its models load in a host process of their own (``serving.environment_isolated``).
        ``idle_ttl_s``: go once no call has touched it for that long (the module's doc)."""
        self._digest = digest
        self._started = time.time()
        self._clock = clock
        self._touched = clock()
        self._idle_ttl_s = idle_ttl_s
        self._stopped = threading.Event()
        self.exited: str | None = None
        self._loads = 0
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        # One load of an artifact at a time: a second holder waits and shares it.
        self._loading: dict[str, threading.Lock] = {}
        self._failed: str | None = None
        # Stream id -> a model's ``predict_stream`` being pulled, and the one context its pulls
        # run in (MLflow's prediction context is a context variable set around the generator:
        # resumed in another thread's context, it fails at the end).
        self._streams: dict[str, tuple[Iterator[Any], contextvars.Context]] = {}
        self._process: Any = None
        if isolated is not None:
            self._isolate(isolated)
        self._touched = clock()  # a build took its time: idle from here
        if idle_ttl_s is not None:
            threading.Thread(target=self._reaper, name="sigserve-env-idle", daemon=True).start()

    def touch(self) -> None:
        """A replica whose table names this environment still wants it."""
        self._touched = self._clock()

    def _reaper(self) -> None:
        assert self._idle_ttl_s is not None
        every = min(self._idle_ttl_s / 4, _IDLE_CHECK_S)
        while not self._stopped.wait(every):
            idle = self._clock() - self._touched
            if idle >= self._idle_ttl_s:
                self._reaped(idle)
                return

    def _reaped(self, idle_s: float) -> None:
        """Untouched for the TTL: stop the host process, then ``exit`` (the actor goes)."""
        self._stopped.set()
        if self._process is not None:
            with contextlib.suppress(Exception):
                self._process.close()
        self.exit(f"no replica touched it for {idle_s:.0f} s")

    def exit(self, why: str) -> None:
        """How this environment goes (its Ray actor kills itself: ``serving.environments``)."""
        self.exited = why
        logger.info("environment %s goes: %s", self._digest[:16], why)

    def _isolate(self, isolated: dict[str, Any]) -> None:
        from serving.environment_builds import EnvironmentBuildFailed
        from serving.environment_isolated import ModelProcess, build_venv, venv_root

        spec = EnvironmentSpec.model_validate(isolated["spec"])
        options, variables = isolated["index"]
        venv = isolated.get("venv")  # one built beforehand (the tests give the serving venv)
        if venv is None:
            try:
                venv = build_venv(spec, venv_root(), (options, variables), isolated["timeout_s"])
            except EnvironmentBuildFailed as exc:
                self._failed = exc.cause  # told by ``info``: a failed creation is a traceback
                return
        self._process = ModelProcess(Path(venv))

    def info(self) -> dict[str, Any]:
        """Which environment this is and what it holds: also how a replica waits for its
        build (the first call returns once the environment is built and this process runs);
        ``failed``: why it could not be built."""
        self.touch()
        with self._lock:
            held = {key: sorted(h.holders) for key, h in self._held.items()}
        process = self._process
        return {"digest": self._digest, "pid": os.getpid(), "started": self._started,
                "loads": self._loads, "held": held, "failed": self._failed,
                # An isolated host process: restarts so far, why it answers nothing for now.
                "restarts": process.restarts if process is not None else 0,
                "broken": process.broken if process is not None else None}  # fmt: skip

    def load(self, key: str, holder: str, record: dict[str, Any]) -> Encoded:
        """Load the artifact (or share the one held) for ``holder``; the metadata files."""
        self.touch()
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                held = self._held.get(key)
            if held is None:
                try:
                    loaded = self._download_and_load(key, artifact_from(record))
                except NotChecked as exc:
                    return error_record(exc, "not-checked")
                except LoadFailed as exc:
                    return error_record(exc, "load-failed")
                except Exception as exc:  # the loader's own code failing: not the artifact's
                    return error_record(LoadFailed(str(exc), permanent=False), "load-failed")
                held = _Held(loaded)
                with self._lock:
                    self._held[key] = held
                    self._loads += 1
            with self._lock:
                held.holders.add(holder)
            return {"files": metadata_files(held.loaded.path)}

    def _download_and_load(self, key: str, artifact: Artifact) -> LoadedModel:
        if self._failed is not None:
            raise LoadFailed(self._failed, permanent=False)
        if self._process is None:
            return download_and_load(artifact)
        from serving.environment_isolated import ProcessModel

        process = self._process
        return download_and_load(artifact, lambda local: ProcessModel(process, key, local))

    def _holding(self, key: str) -> _Held | Encoded:
        """The model held under ``key``, touched; else the error record a caller answers."""
        self.touch()
        with self._lock:
            held = self._held.get(key)
        if held is None:
            error = LoadFailed("the model is no longer held in its environment", permanent=False)
            return error_record(error, "load-failed")
        return held

    def predict(self, key: str, data: Encoded, params: dict[str, Any] | None) -> Encoded:
        held = self._holding(key)
        if not isinstance(held, _Held):
            return held
        try:
            answer = held.loaded.model.predict(decode(data), params=params or None)
            return {"answer": encode(answer)}
        except HostUnavailable as exc:
            return error_record(exc, "unavailable")
        except Exception as exc:
            return error_record(exc)

    def stream(self, key: str, data: Encoded, params: dict[str, Any] | None) -> Encoded:
        """Start the model's ``predict_stream`` on ``data``; its id, for ``next_chunk``."""
        held = self._holding(key)
        if not isinstance(held, _Held):
            return held
        context = contextvars.copy_context()
        try:
            chunks = context.run(
                lambda: iter(held.loaded.model.predict_stream(decode(data), params=params or None))
            )
        except HostUnavailable as exc:
            return error_record(exc, "unavailable")
        except Exception as exc:
            return error_record(exc)
        stream = uuid.uuid4().hex
        with self._lock:
            self._streams[stream] = (chunks, context)
        return {"stream": stream}

    def next_chunk(self, stream: str) -> Encoded:
        """The stream's next chunk, ``done`` after its last, or its error (which ends it)."""
        self.touch()
        with self._lock:
            found = self._streams.get(stream)
        if found is None:
            return error_record(LoadFailed("the stream has ended", permanent=False), "load-failed")
        chunks, context = found
        try:
            return {"chunk": encode(context.run(next, chunks))}
        except StopIteration:
            answer: Encoded = {"done": True}
        except HostUnavailable as exc:
            answer = error_record(exc, "unavailable")
        except Exception as exc:
            answer = error_record(exc)
        with self._lock:
            self._streams.pop(stream, None)
        return answer

    def end_stream(self, stream: str) -> None:
        """The client left (or the deadline passed): close the model's generator."""
        with self._lock:
            found = self._streams.pop(stream, None)
        close = getattr(found[0], "close", None) if found is not None else None
        if found is not None and callable(close):
            with contextlib.suppress(Exception):  # the model's own cleanup
                found[1].run(close)

    def unload(self, key: str, holder: str) -> None:
        with self._lock:
            held = self._held.get(key)
            if held is None:
                return
            held.holders.discard(holder)
            if not held.holders:
                del self._held[key]
        if not held.holders:
            unload = getattr(held.loaded.model, "unload", None)
            if callable(unload):
                with contextlib.suppress(Exception):
                    unload()  # the host process lets go of it too
            held.loaded.close()


def metadata_files(path: Path) -> dict[str, bytes]:
    """The files a replica needs to read the model's metadata and examples with MLflow."""
    files = {"MLmodel": (path / "MLmodel").read_bytes()}
    info = Model.load(str(path / "MLmodel")).saved_input_example_info or {}
    for key in _EXAMPLE_KEYS:
        name = info.get(key)
        if isinstance(name, str) and (path / name).is_file() and ".." not in Path(name).parts:
            files[name] = (path / name).read_bytes()
    return files


class EnvironmentModel:
    """A model served from its environment, as the replica sees it (see the module's doc)."""

    # ``predict`` blocks on another process: never to be called on the replica's event loop
    # (a caller that can run a call inline reads this).
    remote = True

    def __init__(self, metadata: Model, path: Path, send: Send, call: Call | None = None) -> None:
        self.metadata = metadata
        self._send = send
        self._call = call
        try:
            self.input_example: Any = metadata.load_input_example(str(path))
        except Exception:
            self.input_example = None  # as pyfunc's own load does when the file is unreadable

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        answer = self._send(encode(data), params)
        if "error" in answer:
            raise_error(answer["error"])
        return decode(answer["answer"])

    def predict_stream(self, data: Any, params: dict[str, Any] | None = None) -> Iterator[Any]:
        """The model's ``predict_stream``, pulled from its environment one chunk per call
        (nothing is sent before the first pull; closing it closes the model's generator)."""
        if self._call is None:
            raise NotImplementedError("this environment does not stream")
        call = self._call
        started = call("stream", encode(data), params)
        if "error" in started:
            raise_error(started["error"])
        stream, done = started["stream"], False
        try:
            while True:
                answer = call("next_chunk", stream)
                if "error" in answer:
                    done = True  # an error ends the stream there
                    raise_error(answer["error"])
                if answer.get("done"):
                    done = True
                    return
                yield decode(answer["chunk"])
        finally:
            if not done:
                with contextlib.suppress(Exception):
                    call("end_stream", stream)


def loaded_from(
    files: dict[str, bytes], send: Send, release: Callable[[], None], call: Call | None = None
) -> LoadedModel:
    """The replica's ``LoadedModel`` for a model its environment holds: the metadata files in a
    directory of its own (removed with it), ``release`` called when it goes; ``call``: the
    host's other methods by name (streams)."""
    directory = new_model_dir()
    for name, data in files.items():
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    metadata = Model.load(str(directory / "MLmodel"))
    model = EnvironmentModel(metadata, directory, send, call)
    return LoadedModel(model, directory, directory, release)

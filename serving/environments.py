"""Environments of a version's own on Ray: one named actor per environment, shared by replicas.

A version the table gives an ``environment`` (``wire.routing_table.EnvironmentSpec``) is proven
and served in it, never in the replica's interpreter (docs/architecture.md, "Environments of
their own"). Per environment digest there is one Ray actor, ``sigserve-env-<digest[:16]>`` in
the namespace ``sigserve-<app>``, whose body is ``serving.environment_host.EnvironmentHost``:

- **Built by Ray**, from a ``runtime_env`` with ``uv`` for kind ``layered``
  (``serving.environment_builds.runtime_env``): Ray clones the serving venv and installs the
  version's requirement lines in the clone with uv, once per node and Ray session (the clone is
  cached by the hash of the spec). Kind ``isolated`` (another MLflow or pandas major): the
  actor runs in the serving venv and builds a venv of the version's requirements alone with
  uv, its models loaded and called in a host process in that venv
  (``serving.environment_isolated``), as ``mlflow models serve --env-manager uv`` does.
- **Get-or-create**, detached: every replica asks for the actor by name and the first one's
  request creates it, so all replicas (and a replica that restarts) share one environment and
  one build. Detached because no replica owns it: a replica that restarts or scales away must
  not take the environment (and every model in it) down with it.
- **Built as scheduled work:** ``build`` is what the prover calls before loading a version to
  prove it (``serving.proofs``), at most ``concurrency`` builds at once per replica, each within
  ``timeout_s`` (the actor is killed past it). A load on a request's path never waits for a build:
  an environment not built yet starts its build in the background and the load answers 503 with
  Retry-After meanwhile (``load``).
- **Let go** when no table names it any more: a replica that saw an environment named in a
  table and then takes one that names it nowhere kills its actor (Ray then frees its process;
  the venv on disk stays in Ray's runtime-env cache until Ray's own URI cache evicts it).
  Only what the replica saw go: a replica holding an older table never kills an environment a
  newer table brought. An environment dropped while no replica was running stays until the
  cluster restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RuntimeEnvSetupError

from serving.environment_builds import (
    EnvironmentBuildFailed,
    actor_name,
    machine_index_settings,
    namespace,
    resolve,
    resolver_reason,
    runtime_env,
)
from serving.environment_codec import Encoded
from serving.environment_host import (
    EnvironmentHost,
    artifact_record,
    loaded_from,
    raise_error,
)
from serving.loader import LoadedModel, LoadFailed
from serving.model_ids import Artifact
from wire.routing_table import EnvironmentSpec, RoutingTable

logger = logging.getLogger(__name__)

# Threads of one environment's actor: predict calls of its models at once, loads beside them.
ACTOR_MAX_CONCURRENCY = 8
# How long a load waits for an environment that exists to answer before it leaves it to a
# build in the background (an environment being built answers only once built).
RUNNING_WAIT_S = 2.0
# Variables the environment's process needs to download artifacts as the replica does.
_FORWARDED_PREFIXES = ("MLFLOW_", "AWS_", "GOOGLE_", "AZURE_", "HF_")

RemoteHost = ray.remote(EnvironmentHost)


class EnvironmentManager:
    """This replica's view of the environments: builds, loads, lets go (see the module doc)."""

    def __init__(
        self,
        app_name: str,
        *,
        timeout_s: float,
        concurrency: int,
        num_cpus: float = 0.0,
        index: Callable[[], tuple[list[str], dict[str, str]]] = machine_index_settings,
    ) -> None:
        self._namespace = namespace(app_name)
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(concurrency)
        self._num_cpus = num_cpus
        self._index = index
        # Digest -> the actor, once it answered (its environment is built).
        self._ready: dict[str, Any] = {}
        # Digest -> the build under way (callers share it).
        self._building: dict[str, asyncio.Task[Any]] = {}
        self._named: set[str] = set()
        self._holder = uuid.uuid4().hex[:12]
        self.builds_started = 0

    async def build(self, spec: EnvironmentSpec) -> None:
        """Return once ``spec``'s environment runs; ``EnvironmentBuildFailed`` with the cause
        when it cannot be built (a requirement that does not resolve, past the timeout)."""
        if spec.digest in self._ready:
            return
        task = self._building.get(spec.digest)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._build(spec))
            self._building[spec.digest] = task
            task.add_done_callback(lambda _: self._building.pop(spec.digest, None))
        # Shielded: a caller that gives up (a cancelled proof) leaves the build to finish.
        self._ready[spec.digest] = await asyncio.shield(task)

    async def _build(self, spec: EnvironmentSpec) -> Any:
        name = actor_name(spec.digest)
        async with self._slots:
            actor = await asyncio.to_thread(self._existing, name)
            if actor is None:
                index = self._index()
                # Fails in about a second with uv's reason, where Ray takes minutes (see
                # ``serving.environment_builds.resolve``).
                await asyncio.to_thread(resolve, spec, index, self._timeout_s)
                actor = await asyncio.to_thread(self._create, spec, name, index)
            try:
                info = await asyncio.wait_for(_awaited(actor.info.remote()), self._timeout_s)
                if info.get("failed"):
                    await asyncio.to_thread(_kill, actor)
                    raise EnvironmentBuildFailed(info["failed"])
            except TimeoutError:
                await asyncio.to_thread(_kill, actor)
                raise EnvironmentBuildFailed(
                    f"its environment ({', '.join(spec.requirements)}) was not built within "
                    f"{self._timeout_s:g} s (SIGSERVE_ENVIRONMENT_BUILD_TIMEOUT_S)"
                ) from None
            except RuntimeEnvSetupError as exc:
                raise EnvironmentBuildFailed(resolver_reason(str(exc), spec.requirements)) from None
            except RayActorError as exc:
                raise EnvironmentBuildFailed(resolver_reason(str(exc), spec.requirements)) from None
        logger.info("environment %s runs (pid %s, %s)", name, info["pid"],
                    ", ".join(spec.requirements))  # fmt: skip
        return actor

    def _existing(self, name: str) -> Any:
        try:
            actor = ray.get_actor(name, namespace=self._namespace)
        except ValueError:
            return None  # none yet
        logger.info("environment %s exists: reusing it", name)
        return actor

    def _create(self, spec: EnvironmentSpec, name: str, index: tuple[list[str], dict[str, str]]
                ) -> Any:  # fmt: skip
        # get_if_exists: another replica may have created it since ``_existing``.
        self.builds_started += 1
        logger.info("building environment %s: %s", name, ", ".join(spec.requirements))
        env_vars = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_PREFIXES)}
        options: dict[str, Any] = {
            "name": name,
            "namespace": self._namespace,
            "lifetime": "detached",
            "get_if_exists": True,
            "num_cpus": self._num_cpus,
            "max_concurrency": ACTOR_MAX_CONCURRENCY,
        }
        if spec.kind == "isolated":
            # The actor runs in the serving venv and builds the venv that inherits nothing
            # itself (``serving.environment_isolated``).
            isolated = {"spec": spec.model_dump(mode="json"), "index": list(index),
                        "timeout_s": self._timeout_s}  # fmt: skip
            options["runtime_env"] = {"env_vars": env_vars}
            return RemoteHost.options(**options).remote(spec.digest, isolated)
        options["runtime_env"] = runtime_env(
            spec, timeout_s=self._timeout_s, index=index, env_vars=env_vars
        )
        return RemoteHost.options(**options).remote(spec.digest)

    async def load(self, artifact: Artifact) -> LoadedModel:
        """``artifact`` loaded in its environment (``serving.loader.Environments``). Never
        waits for a build: one not done yet is started, and this raises the 503 meanwhile."""
        spec = artifact.environment
        if spec is None:
            raise LoadFailed("the artifact names no environment", permanent=False)
        actor = self._ready.get(spec.digest) or await self._running(spec)
        if actor is None:
            if spec.digest not in self._building:
                asyncio.get_running_loop().create_task(self._build_quietly(spec))
            raise LoadFailed("its environment is being built", permanent=False)
        key, holder = artifact.key, f"{self._holder}-{uuid.uuid4().hex[:8]}"
        try:
            answer = await _awaited(actor.load.remote(key, holder, artifact_record(artifact)))
        except RayActorError as exc:
            self._ready.pop(spec.digest, None)  # gone (let go, its node lost): built again
            raise LoadFailed(f"its environment stopped: {str(exc)[:200]}", permanent=False) from exc
        if "error" in answer:
            raise_error(answer["error"])

        def send(data: Encoded, params: dict[str, Any] | None) -> Encoded:
            # Called in a worker thread (ModelHost's), so blocking on Ray here blocks nothing.
            result: Encoded = ray.get(actor.predict.remote(key, data, params))
            return result

        def release() -> None:
            actor.unload.remote(key, holder)

        return await asyncio.to_thread(loaded_from, answer["files"], send, release)

    async def _running(self, spec: EnvironmentSpec) -> Any:
        """The environment's actor if it exists and answers at once (built before this replica
        started, by another replica or by this one before a restart); else None."""
        if spec.digest in self._building:
            return None
        actor = await asyncio.to_thread(self._existing, actor_name(spec.digest))
        if actor is None:
            return None
        try:
            info = await asyncio.wait_for(_awaited(actor.info.remote()), RUNNING_WAIT_S)
        except (TimeoutError, RayActorError, RuntimeEnvSetupError):
            return None  # still being built, or failed: a build (in the background) tells
        if info.get("failed"):
            return None  # a build (in the background) lets it go and tells
        self._ready[spec.digest] = actor
        return actor

    async def _build_quietly(self, spec: EnvironmentSpec) -> None:
        try:
            await self.build(spec)
        except EnvironmentBuildFailed as exc:
            logger.warning("environment %s was not built: %s", actor_name(spec.digest), exc.cause)
        except Exception:
            logger.exception("building environment %s failed", actor_name(spec.digest))

    def offer(self, table: RoutingTable) -> None:
        """The latest table: environments this replica saw named and no table names now go."""
        named = {
            entry.environment.digest
            for model in table.models.values()
            for entry in model.versions.values()
            if entry.environment is not None
        }
        gone, self._named = self._named - named, named
        for digest in gone:
            self._ready.pop(digest, None)
            asyncio.get_running_loop().create_task(asyncio.to_thread(self._let_go, digest))

    def _let_go(self, digest: str) -> None:
        name = actor_name(digest)
        try:
            actor = ray.get_actor(name, namespace=self._namespace)
        except ValueError:
            return  # already gone
        _kill(actor)
        logger.info("let go of environment %s: no version in the table names it", name)


async def _awaited(ref: Any) -> Any:
    return await ref


def _kill(actor: Any) -> None:
    with contextlib.suppress(RayActorError, GetTimeoutError, ValueError):
        ray.kill(actor, no_restart=True)

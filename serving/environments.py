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
  Retry-After meanwhile (``load``). A build that failed is tried again only after a backoff
  (``retry_s``, doubling up to ``max_retry_s``); meanwhile ``build`` raises its cause again and
  a load answers 503 with it.
- **Let go** when no table names it any more: a replica that saw an environment named in a
  table and then takes one that names it nowhere kills its actor (Ray then frees its process;
  the venv on disk stays in Ray's runtime-env cache until Ray's own URI cache evicts it).
  Only what the replica saw go: a replica holding an older table never kills an environment a
  newer table brought. A build that was under way when its environment was let go kills what
  it made rather than leave it running.
- **Touched, else reaped:** every ``idle_ttl_s / 3`` a replica touches the environments its table
  names; an environment no replica touched for ``idle_ttl_s`` (``SIGSERVE_ENVIRONMENT_IDLE_TTL_S``,
  15 min; 0: never) kills its own actor (``serving.environment_host``), so one dropped while no
  replica ran (the app deleted, ``sigserve up`` stopped with Ray kept, every replica scaled
  away) does not run for good. A replica whose model's environment went (reaped, killed, its
  node lost) answers 503 and builds it again; the next call loads the model there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from serving.environment_actors import ActorGone, Cluster, Hold, RayCluster, SetupFailed
from serving.environment_builds import (
    EnvironmentBuildFailed,
    actor_name,
    machine_index_settings,
    named,
    namespace,
    resolve,
    resolver_reason,
    runtime_env,
    setting,
)
from serving.environment_errors import raise_error
from serving.environment_host import artifact_record, loaded_from
from serving.loader import LoadedModel, LoadFailed
from serving.model_ids import Artifact
from wire.routing_table import EnvironmentSpec, RoutingTable

logger = logging.getLogger(__name__)

# Threads of one environment's actor: predict calls of its models at once, loads beside them.
ACTOR_MAX_CONCURRENCY = 8
# How long a load waits for an environment that exists to answer before it leaves it to a
# build in the background (an environment being built answers only once built).
RUNNING_WAIT_S = 2.0
# An environment no replica touched for this long goes (the module's doc); 0: never.
IDLE_TTL_S = setting("SIGSERVE_ENVIRONMENT_IDLE_TTL_S", 900.0)
_TOUCHES_PER_TTL = 3
# A failed build is tried again after this, doubling with each failure in a row, up to the max.
BUILD_RETRY_S = 5.0
BUILD_RETRY_MAX_S = 300.0

Resolver = Callable[[EnvironmentSpec, tuple[list[str], dict[str, str]], float], None]


@dataclass(frozen=True)
class _Failed:
    cause: str
    until: float
    count: int


class EnvironmentManager:
    """This replica's view of the environments: builds, loads, touches, lets go (module doc)."""

    def __init__(
        self,
        app_name: str,
        *,
        timeout_s: float,
        concurrency: int,
        num_cpus: float = 0.0,
        index: Callable[[], tuple[list[str], dict[str, str]]] = machine_index_settings,
        idle_ttl_s: float = IDLE_TTL_S,
        cluster: Cluster | None = None,
        resolver: Resolver = resolve,
        clock: Callable[[], float] = time.monotonic,
        retry_s: float = BUILD_RETRY_S,
        max_retry_s: float = BUILD_RETRY_MAX_S,
    ) -> None:
        self._namespace = namespace(app_name)
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(concurrency)
        self._num_cpus = num_cpus
        self._index = index
        self._idle_ttl_s = idle_ttl_s
        self._cluster: Cluster = cluster if cluster is not None else RayCluster()
        self._resolve = resolver
        self._clock = clock
        self._retry_s, self._max_retry_s = retry_s, max_retry_s
        # Digest -> the actor, once it answered (its environment is built).
        self._ready: dict[str, Any] = {}
        # Digest -> the build under way (callers share it).
        self._building: dict[str, asyncio.Task[Any]] = {}
        # Digest -> its last build's failure, while it is not tried again.
        self._failed: dict[str, _Failed] = {}
        # Digest -> how often a table stopped naming it: a build that sees this change while
        # it runs was let go meanwhile.
        self._drops: dict[str, int] = {}
        self._named: set[str] = set()
        # Every task this manager starts: the loop keeps only weak references to tasks.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._touching: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._holder = uuid.uuid4().hex[:12]
        self.builds_started = 0

    @property
    def pending(self) -> int:
        """Tasks started here and not done (builds in the background, let-gos, touches)."""
        return len(self._tasks)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for the tasks started here (not the touches, which never end)."""
        while waiting := [t for t in self._tasks if t is not self._touching]:
            await asyncio.gather(*waiting, return_exceptions=True)

    async def close(self) -> None:
        """Stop everything started here (environments stay: other replicas may hold them)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._touching = None

    async def build(self, spec: EnvironmentSpec) -> None:
        """Return once ``spec``'s environment runs; ``EnvironmentBuildFailed`` with the cause
        when it cannot be built (a requirement that does not resolve, past the timeout), or
        failed less than its backoff ago."""
        if spec.digest in self._ready:
            return
        failed = self._backing_off(spec.digest)
        if failed is not None:
            raise EnvironmentBuildFailed(failed.cause)
        # Shielded: a caller that gives up (a cancelled proof) leaves the build to finish.
        await asyncio.shield(self._start(spec))

    def _start(self, spec: EnvironmentSpec) -> asyncio.Task[Any]:
        task = self._building.get(spec.digest)
        if task is None:
            task = self._spawn(self._build(spec))
            self._building[spec.digest] = task
            task.add_done_callback(lambda _: self._building.pop(spec.digest, None))
        return task

    def _backing_off(self, digest: str) -> _Failed | None:
        failed = self._failed.get(digest)
        return failed if failed is not None and self._clock() < failed.until else None

    async def _build(self, spec: EnvironmentSpec) -> Any:
        digest, drops = spec.digest, self._drops.get(spec.digest, 0)
        try:
            actor = await self._built(spec)
        except EnvironmentBuildFailed as exc:
            if not self._let_go_since(digest, drops):
                count = self._failed[digest].count + 1 if digest in self._failed else 1
                wait = min(self._retry_s * 2 ** (count - 1), self._max_retry_s)
                self._failed[digest] = _Failed(exc.cause, self._clock() + wait, count)
            raise
        if self._let_go_since(digest, drops):
            # Its ``_let_go`` ran before this build made the actor, and found none to kill.
            await asyncio.to_thread(self._cluster.kill, actor)
            raise EnvironmentBuildFailed(
                f"its environment ({named(spec.requirements)}) was let go while it was being "
                "built: no table names it any more"
            )
        self._failed.pop(digest, None)
        self._ready[digest] = actor
        return actor

    def _let_go_since(self, digest: str, drops: int) -> bool:
        return self._drops.get(digest, 0) != drops and digest not in self._named

    async def _built(self, spec: EnvironmentSpec) -> Any:
        name = actor_name(spec.digest)
        async with self._slots:
            actor = await asyncio.to_thread(self._existing, name)
            if actor is None:
                index = self._index()
                # Fails in about a second with uv's reason, where Ray takes minutes (see
                # ``serving.environment_builds.resolve``).
                await asyncio.to_thread(self._resolve, spec, index, self._timeout_s)
                actor = await asyncio.to_thread(self._create, spec, name, index)
            try:
                info = await asyncio.wait_for(self._cluster.call(actor, "info"), self._timeout_s)
                if info.get("failed"):
                    await asyncio.to_thread(self._cluster.kill, actor)
                    raise EnvironmentBuildFailed(info["failed"])
            except TimeoutError:
                await asyncio.to_thread(self._cluster.kill, actor)
                raise EnvironmentBuildFailed(
                    f"its environment ({named(spec.requirements)}) was not built within "
                    f"{self._timeout_s:g} s (SIGSERVE_ENVIRONMENT_BUILD_TIMEOUT_S)"
                ) from None
            except (SetupFailed, ActorGone) as exc:
                raise EnvironmentBuildFailed(resolver_reason(str(exc), spec.requirements)) from None
        logger.info("environment %s runs (pid %s, %s)", name, info["pid"],
                    named(spec.requirements))  # fmt: skip
        return actor

    def _existing(self, name: str) -> Any:
        actor = self._cluster.existing(name, self._namespace)
        if actor is not None:
            logger.info("environment %s exists: reusing it", name)
        return actor

    def _create(self, spec: EnvironmentSpec, name: str, index: tuple[list[str], dict[str, str]]
                ) -> Any:  # fmt: skip
        # get_if_exists: another replica may have created it since ``_existing``.
        self.builds_started += 1
        logger.info("building environment %s: %s", name, named(spec.requirements))
        env_vars = self._cluster.forwarded_env()
        options: dict[str, Any] = {
            "name": name,
            "namespace": self._namespace,
            "lifetime": "detached",
            "get_if_exists": True,
            "num_cpus": self._num_cpus,
            "max_concurrency": ACTOR_MAX_CONCURRENCY,
        }
        ttl = self._idle_ttl_s if self._idle_ttl_s > 0 else None
        isolated: dict[str, Any] | None = None
        if spec.kind == "isolated":
            # The actor runs in the serving venv and builds the venv that inherits nothing
            # itself (``serving.environment_isolated``).
            isolated = {"spec": spec.model_dump(mode="json"), "index": list(index),
                        "timeout_s": self._timeout_s}  # fmt: skip
            options["runtime_env"] = {"env_vars": env_vars}
        else:
            options["runtime_env"] = runtime_env(
                spec, timeout_s=self._timeout_s, index=index, env_vars=env_vars
            )
        return self._cluster.create((spec.digest, isolated), {"idle_ttl_s": ttl}, options)

    async def load(self, artifact: Artifact) -> LoadedModel:
        """``artifact`` loaded in its environment (``serving.loader.Environments``). Never
        waits for a build: one not done yet is started, and this raises the 503 meanwhile."""
        spec = artifact.environment
        if spec is None:
            raise LoadFailed("the artifact names no environment", permanent=False)
        self._loop = asyncio.get_running_loop()
        actor = self._ready.get(spec.digest) or await self._running(spec)
        if actor is None:
            failed = self._backing_off(spec.digest)
            if failed is not None:
                wait = failed.until - self._clock()
                raise LoadFailed(f"{failed.cause}; it is built again in {wait:.0f} s",
                                 permanent=False)  # fmt: skip
            if spec.digest not in self._building:
                self._spawn(self._build_quietly(spec))
            raise LoadFailed("its environment is being built", permanent=False)
        remote = Hold(self._cluster, actor, (artifact.key, f"{self._holder}-{uuid.uuid4().hex[:8]}",
                      artifact_record(artifact)), lambda: self._ready.get(spec.digest),
                      lambda gone: self.gone(spec, gone))  # fmt: skip
        try:
            answer = await self._cluster.call(actor, "load", *remote.load_args)
        except ActorGone as exc:
            self._ready.pop(spec.digest, None)  # gone (let go, reaped, its node lost): built again
            raise LoadFailed(f"its environment stopped: {exc}", permanent=False) from None
        if "error" in answer:
            raise_error(answer["error"])
        return await asyncio.to_thread(
            loaded_from, answer["files"], remote.send, remote.release, remote.call
        )

    async def _running(self, spec: EnvironmentSpec) -> Any:
        """The environment's actor if it exists and answers at once (built before this replica
        started, by another replica or by this one before a restart); else None."""
        if spec.digest in self._building:
            return None
        actor = await asyncio.to_thread(self._existing, actor_name(spec.digest))
        if actor is None:
            return None
        try:
            info = await asyncio.wait_for(self._cluster.call(actor, "info"), RUNNING_WAIT_S)
        except (TimeoutError, ActorGone, SetupFailed):
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

    def gone(self, spec: EnvironmentSpec, actor: Any) -> None:
        """``actor`` (``spec``'s) answered as gone to a call from a worker thread: forget it
        and build the environment again in the background (after its backoff, if it failed)."""
        loop = self._loop
        if loop is None:
            return

        def again() -> None:
            if self._ready.get(spec.digest) is actor:
                del self._ready[spec.digest]
            if spec.digest not in self._building and self._backing_off(spec.digest) is None:
                self._spawn(self._build_quietly(spec))

        with contextlib.suppress(RuntimeError):  # the loop closed: the replica is stopping
            loop.call_soon_threadsafe(again)

    def offer(self, table: RoutingTable) -> None:
        """The latest table: environments this replica saw named and no table names now go;
        the ones it names are touched from now on."""
        named_now = {
            entry.environment.digest
            for model in table.models.values()
            for entry in model.versions.values()
            if entry.environment is not None
        }
        gone, self._named = self._named - named_now, named_now
        for digest in gone:
            self._drops[digest] = self._drops.get(digest, 0) + 1
            self._ready.pop(digest, None)
            self._spawn(asyncio.to_thread(self._let_go, digest))
        if self._touching is None and self._idle_ttl_s > 0:
            self._touching = self._spawn(self._touch_loop())

    def _let_go(self, digest: str) -> None:
        if digest in self._named:
            return  # named again by a later table meanwhile
        name = actor_name(digest)
        actor = self._cluster.existing(name, self._namespace)
        if actor is None:
            return  # already gone, or not made yet (its build kills it: ``_build``)
        self._cluster.kill(actor)
        logger.info("let go of environment %s: no version in the table names it", name)

    async def _touch_loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.touch)
            except Exception:
                logger.exception("touching environments failed; trying again")
            await asyncio.sleep(self._idle_ttl_s / _TOUCHES_PER_TTL)

    def touch(self) -> int:
        """Tell every environment the table names that it is still wanted; how many exist."""
        touched = 0
        for digest in list(self._named):
            actor = self._ready.get(digest) or self._cluster.existing(
                actor_name(digest), self._namespace
            )
            if actor is not None:
                self._cluster.tell(actor, "touch")
                touched += 1
        return touched

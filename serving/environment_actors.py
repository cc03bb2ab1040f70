"""The Ray side of environments of a version's own: named detached actors, and calls to them.

``serving.environments`` decides (build, load, let go, touch); this module is how it reaches
Ray, behind a small seam (``Cluster``) so that its decisions are tested without a cluster, and
how a replica's model calls its environment (``Hold``).
Errors cross it as ``ActorGone`` (killed, reaped, its node lost) and ``SetupFailed`` (Ray could
not build its ``runtime_env``), never as Ray's own classes, and their text is redacted
(``serving.environment_builds.redact``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RuntimeEnvSetupError

from serving.environment_builds import SETTINGS
from serving.environment_codec import Encoded
from serving.environment_errors import EnvironmentUnavailable, raise_error
from serving.environment_host import EnvironmentHost
from wire.redaction import redact

logger = logging.getLogger(__name__)

_ERROR_LIMIT = 300


class ActorGone(Exception):
    """The environment's actor is gone (killed, let go, reaped when idle, its node lost)."""


class SetupFailed(Exception):
    """Ray could not set the actor's ``runtime_env`` up; the text is Ray's (redacted)."""


class Cluster(Protocol):
    """Where environments' actors live (``RayCluster``; the tests give one in-process)."""

    def existing(self, name: str, namespace: str) -> Any | None: ...

    def create(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any: ...

    def kill(self, actor: Any) -> None: ...

    async def call(self, actor: Any, method: str, *args: Any) -> Any: ...

    def call_blocking(self, actor: Any, method: str, *args: Any) -> Any: ...

    def tell(self, actor: Any, method: str, *args: Any) -> None: ...

    def forwarded_env(self) -> dict[str, str]: ...


class RayEnvironmentHost(EnvironmentHost):
    """The actor's body: an ``EnvironmentHost`` that goes, when idle, by killing its own actor
    (Ray then frees the name, so the next replica that wants it builds it again)."""

    def exit(self, why: str) -> None:
        super().exit(why)
        try:
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
        except Exception:
            logger.exception("could not kill the idle environment's actor: exiting its process")
            os._exit(0)


RemoteHost = ray.remote(RayEnvironmentHost)


class RayCluster:
    """``Cluster`` on the Ray session this process is connected to."""

    def existing(self, name: str, namespace: str) -> Any | None:
        try:
            return ray.get_actor(name, namespace=namespace)
        except ValueError:
            return None  # none yet, or gone

    def create(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> Any:
        return RemoteHost.options(**options).remote(*args, **kwargs)

    def kill(self, actor: Any) -> None:
        with contextlib.suppress(RayActorError, GetTimeoutError, ValueError):
            ray.kill(actor, no_restart=True)

    async def call(self, actor: Any, method: str, *args: Any) -> Any:
        try:
            return await getattr(actor, method).remote(*args)
        except RuntimeEnvSetupError as exc:
            raise SetupFailed(redact(str(exc))) from None
        except RayActorError as exc:
            raise ActorGone(redact(str(exc))[:_ERROR_LIMIT]) from None

    def call_blocking(self, actor: Any, method: str, *args: Any) -> Any:
        try:
            return ray.get(getattr(actor, method).remote(*args))
        except RayActorError as exc:
            raise ActorGone(redact(str(exc))[:_ERROR_LIMIT]) from None

    def tell(self, actor: Any, method: str, *args: Any) -> None:
        with contextlib.suppress(RayActorError):
            getattr(actor, method).remote(*args)  # its answer is not waited for

    def forwarded_env(self) -> dict[str, str]:
        """The variables an environment's actor is given: those the replica itself was given
        to load models (its deployment's ``runtime_env``: ``serving.app.FORWARDED_ENV`` and
        ``SIGSERVE_FORWARD_ENV``) and the settings of environments, no more. What the node's
        own environment has, the actor inherits from Ray as the replica did."""
        from serving.app import FORWARDED_ENV  # at call time: serving.app imports this module

        names = set(FORWARDED_ENV).union(SETTINGS)
        # Asked outside a Ray session, Ray's runtime context would start a local cluster.
        if ray.is_initialized():
            with contextlib.suppress(Exception):
                names.update(ray.get_runtime_context().runtime_env.env_vars())
        return {k: v for k, v in os.environ.items() if k in names}


class Hold:
    """A replica's hold on one model in its environment: the calls ``EnvironmentModel`` makes,
    from a worker thread (``ModelHost``'s), so blocking on the actor blocks nothing.

    An actor that went (reaped, killed, its node lost) is a 503 and ``gone`` (the manager builds
    it again in the background); once ``current`` is another actor, the next call loads the
    model there first (``serving.environments``)."""

    def __init__(
        self,
        cluster: Cluster,
        actor: Any,
        load_args: tuple[str, str, dict[str, Any]],
        current: Callable[[], Any],
        gone: Callable[[Any], None],
    ) -> None:
        self._cluster, self._actor = cluster, actor
        # The host's ``load`` arguments: model key, holder, artifact record.
        self.load_args = load_args
        self._current, self._gone = current, gone

    def send(self, data: Encoded, params: dict[str, Any] | None) -> Encoded:
        key, actor = self.load_args[0], self._actor
        try:
            result: Encoded = self._cluster.call_blocking(actor, "predict", key, data, params)
            return result
        except ActorGone as exc:
            cause = str(exc)
        current = self._current()
        if current is None or current is actor:
            self._gone(actor)
            raise EnvironmentUnavailable(
                f"its environment stopped ({cause[:200]}); it is being started again"
            )
        try:
            answer = self._cluster.call_blocking(current, "load", *self.load_args)
        except ActorGone as exc:
            self._gone(current)
            raise EnvironmentUnavailable(f"its environment stopped ({str(exc)[:200]})") from None
        if "error" in answer:
            raise_error(answer["error"])
        self._actor = current
        again: Encoded = self._cluster.call_blocking(current, "predict", key, data, params)
        return again

    def call(self, method: str, *args: Any) -> Encoded:
        """Another method of the host (a stream's): an actor gone is a 503 (no stream resumes
        in a new environment; the next request's ``send`` loads the model there)."""
        if method == "stream":
            args = (self.load_args[0], *args)  # the host names the model by its key
        try:
            answer: Encoded = self._cluster.call_blocking(self._actor, method, *args)
        except ActorGone as exc:
            self._gone(self._actor)
            raise EnvironmentUnavailable(f"its environment stopped ({str(exc)[:200]})") from None
        return answer

    def release(self) -> None:
        self._cluster.tell(self._actor, "unload", *self.load_args[:2])

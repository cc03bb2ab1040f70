"""The serving deployment: each replica answers the HTTP API and holds the models it runs.

One deployment, not an ingress in front of a model deployment: measured here, the second hop
cost half the throughput of a lone client and ~15% at 16 (``docs/benchmarks.md``), and a
replica that holds both its routing table and its models can load a new default before it
answers for that default. What stays apart is the code: the API
(``serving.api``) only validates and resolves, ``serving.model_host`` batches and predicts, and
``serving.loader`` loads without Ray. See ``docs/architecture.md`` ("One deployment").

Models are multiplexed: ``@serve.multiplexed`` keeps an LRU of ``max_num_models_per_replica``
loaded models per replica, keyed ``name/version@key`` (the key names the checked artifact), and
reports them to Ray Serve, which prefers a replica that holds a model when a request carries
its id. The FastAPI app is built per replica (``__serve_build_asgi_app__``, after
``__init__``), so nothing (no HTTP client, no table) exists at import time.

``serve.multiplexed`` fixes its limit when it wraps a function; wrapping at class definition
would freeze it at import time, so the wrapper is made per replica in ``__init__``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve

from serving.api import create_app
from serving.batching import BatchStats
from serving.environments import EnvironmentManager
from serving.gcs_store import GcsTableStore
from serving.grpc_inference import GrpcInference
from serving.load_ahead import LoadAhead
from serving.load_reports import LoadFailureReporter
from serving.loader import LoadedModel, PyfuncLoader, Refusal
from serving.metrics import ReplicaMetrics
from serving.model_host import ModelHost
from serving.model_ids import Artifact, bind
from serving.proofs import Prover
from serving.resolve import Target
from serving.rollout_counts import RolloutCounts, RolloutReporter
from serving.rollout_path import RolloutPath
from serving.rollout_shadow import Shadows
from serving.rollout_warm import CandidateWarmer
from serving.settings import ServingSettings
from serving.table_source import TableSource
from serving.trials import Trials, install
from wire import logs
from wire.private_dirs import private_dir
from wire.routing_table import RoutingTable

logger = logging.getLogger(__name__)

UNPROTECTED = (
    "SIGSERVE_SERVING_TOKEN is not set: a serving replica takes only routing tables signed with "
    "the key derived from it, so it does not start without it (give it the controller's)"
)


@serve.ingress()
class Server:
    def __init__(self, settings: ServingSettings) -> None:
        # Without the serving token a replica could check no table's signature: whoever answers
        # for the controller, or writes the store, would choose what it runs. It refuses to
        # start rather than serve unprotected (docs/security.md, "The routing table's
        # signature"); Ray Serve shows the deployment failing with this message.
        if settings.serving_token is None:
            raise RuntimeError(UNPROTECTED)
        self._settings = settings
        replica = serve.get_replica_context().replica_id.unique_id
        self._replica = replica
        _log_to_file(settings, replica)
        # Ray's metrics exist only inside a replica: made here, never at import.
        self._metrics = ReplicaMetrics()
        self._reporter = LoadFailureReporter(
            settings.controller_url, settings.serving_token.get_secret_value(), replica
        )
        # Versions the table gives an environment of their own are built, loaded and proven
        # there (``serving.environments``), never in this interpreter.
        self._environments = EnvironmentManager(
            settings.app_name,
            timeout_s=settings.environment_build_timeout_s,
            concurrency=settings.environment_build_concurrency,
            num_cpus=settings.environment_num_cpus,
        )
        self._loader = PyfuncLoader(
            on_permanent_failure=self._reporter.report, environments=self._environments
        )

        # A plain closure, not a bound method: the multiplex wrapper stores its LRU as an
        # attribute of the function it wraps, which a bound method cannot carry.
        async def load(model_id: str) -> LoadedModel:
            # Ray's multiplexer has already evicted to make room when it calls this, so nothing
            # that can fail happens here: the model was loaded ahead (``serving.load_ahead``).
            loaded = await self._ahead.take(model_id)

            # Ray's multiplexer calls a model's ``__del__`` when it evicts it (and only then:
            # on an instance, Python itself never calls it), which is how evictions are known.
            # A coroutine, so the multiplexer awaits it on the loop instead of needing a free
            # worker thread while it holds its lock.
            async def evicted() -> None:
                self._evicted(model_id)

            loaded.__dict__["__del__"] = evicted
            return loaded

        self._multiplexed: Callable[[str], Awaitable[LoadedModel]] = serve.multiplexed(
            max_num_models_per_replica=settings.max_num_models_per_replica
        )(load)
        self._ahead = LoadAhead(self._timed_load, self._multiplexed)
        self._host = ModelHost(
            self._model,
            max_batch_size=settings.max_batch_size,
            batch_wait_s=settings.batch_wait_ms / 1000,
            inline_below_s=settings.inline_predict_below_ms / 1000,
            max_models=settings.max_num_models_per_replica,
            warm_timeout_s=settings.warm_timeout_s,
            predict_timeout_s=settings.predict_timeout_s,
            max_wedged_predicts=settings.max_wedged_predicts,
            on_batch=self._metrics.batch,
        )
        # Versions the table says await their proof are proven here, one at a time, in the
        # background (``serving.proofs``).
        self._prover = Prover(
            self._load_to_prove,
            self._reporter.send_proof,
            timeout_s=lambda t: t.model.predict_timeout_s or settings.predict_timeout_s,
            environments=self._environments,
            keep=self._keep_proven,
        )
        # A rollout's candidate is loaded through the multiplexer, as a request would load it,
        # before the rollout routes any request to it here (``serving.rollout_warm``).
        self._warmer = CandidateWarmer(self._model)

    async def _model(self, target: Target) -> LoadedModel:
        # No ``bind`` per request: the id is made from the target's artifact, and the loader
        # binds every id it loads (``PyfuncLoader.load``), so a model held under it is that one.
        model_id = target.model_id
        # A load of this id that failed a moment ago answers again at once, before any load.
        self._loader.check(model_id)
        # A default's failure is confirmed by a second load before it is reported: its
        # quarantine would take the whole endpoint out (``PyfuncLoader.load``).
        is_default = target.model.default_version == target.version.version
        return await self._ahead.model(model_id, target.artifact, confirm=is_default)

    async def _load_to_prove(self, target: Target, default: bool) -> LoadedModel:
        """A version to prove, loaded. One that will be its model's default goes through the
        multiplexer as a request's would (confirmed, and warm once it is live); any other is
        loaded beside it and let go after its proof, so proving costs no loaded model."""
        if default:
            return await self._model(target)
        self._loader.check(target.model_id)
        return await self._timed_load(target.model_id, target.artifact, False)

    async def _keep_proven(self, target: Target, loaded: LoadedModel) -> bool:
        """A proven version that will not be its model's default, kept loaded for its first
        request when the multiplexer has a free slot: its proof's load is then its only one.
        Never at a loaded model's cost (``LoadAhead.keep``)."""
        try:
            bind(target.model_id, target.artifact)
            return await self._ahead.keep(
                target.model_id, target.artifact, loaded, self._settings.max_num_models_per_replica
            )
        except Exception:
            # Keeping it is a saving, never a cost to its proof: its first request loads it.
            logger.exception("could not keep %s loaded after its proof", target.model_id)
            return False

    async def _timed_load(self, model_id: str, artifact: Artifact, confirm: bool) -> LoadedModel:
        started = time.perf_counter()
        try:
            loaded = await self._loader.load(model_id, artifact, confirm=confirm)
        except Exception:
            self._metrics.loaded(model_id, time.perf_counter() - started, ok=False)
            raise
        self._metrics.loaded(model_id, time.perf_counter() - started, ok=True)
        return loaded

    def _evicted(self, model_id: str) -> None:
        self._ahead.evicted(model_id)
        self._metrics.evicted(model_id)

    def __serve_build_asgi_app__(self) -> FastAPI:
        settings = self._settings
        source = TableSource(
            settings.controller_url,
            poll_timeout_s=settings.table_poll_timeout_s,
            store=GcsTableStore(settings.app_name),
            prepare=self._host.warm if settings.warm_defaults else None,
            # Signs the tables taken; a restored database is believed only from a replica with
            # it, and the controller refuses the table itself without it (docs/security.md).
            token=token.get_secret_value() if (token := settings.serving_token) else None,
            watch=self._watch,
        )
        self._metrics.watch(source)
        counts = RolloutCounts()
        rollouts = RolloutPath(
            counts,
            Shadows(counts, on_result=self._metrics.shadow),
            RolloutReporter(
                settings.controller_url,
                token.get_secret_value() if (token := settings.serving_token) else "",
                self._replica,
                counts,
                lambda: source.table,
            ),
            ready=self._warmer.ready,
        )
        app = create_app(
            source,
            self._host,
            startup_wait_s=settings.table_startup_wait_s,
            max_body_bytes=settings.max_body_mb * 1024 * 1024,
            max_records=settings.max_records,
            recorder=self._metrics,
            default_model=settings.default_model,
            rollouts=rollouts,
        )
        # The dry run's proof (``POST /-/trials``), asked by the controller with the serving
        # token; beside the multiplexer, never in it.
        trials = Trials(
            token.get_secret_value() if (token := settings.serving_token) else None,
            predict_timeout_s=settings.predict_timeout_s,
            replica=self._replica,
            environments=self._environments,
        )
        install(app, trials)
        self._grpc: GrpcInference = app.state.grpc_inference
        return app

    # The Open Inference Protocol over gRPC: Ray Serve's gRPC listener (``grpc_options``,
    # ``sigserve.stack``) calls the method named after the RPC with its message and context;
    # each hands it to the app's ``GrpcInference``, on the HTTP routes' path.

    async def ServerLive(self, request: Any, grpc_context: Any) -> Any:
        return await self._grpc.server_live(request, grpc_context)

    async def ServerReady(self, request: Any, grpc_context: Any) -> Any:
        return await self._grpc.server_ready(request, grpc_context)

    async def ModelReady(self, request: Any, grpc_context: Any) -> Any:
        return await self._grpc.model_ready(request, grpc_context)

    async def ServerMetadata(self, request: Any, grpc_context: Any) -> Any:
        return await self._grpc.server_metadata(request, grpc_context)

    async def ModelMetadata(self, request: Any, grpc_context: Any) -> Any:
        return await self._grpc.model_metadata(request, grpc_context)

    async def ModelInfer(self, request: Any, grpc_context: Any) -> Any:
        return await self._grpc.model_infer(request, grpc_context)

    def _watch(self, table: RoutingTable) -> None:
        self._prover.offer(table)
        self._warmer.offer(table)
        # Environments no table names any more are let go (``serving.environments``).
        self._environments.offer(table)

    async def check_health(self) -> None:
        """Ray Serve's health check, every few seconds: raising makes Ray replace the replica.

        It raises when more predict calls hang past their deadline than the replica can spare
        worker threads for (``serving.deadlines``); other models keep answering until then.
        """
        self._host.check_health()

    # Read by tests and operators through a deployment handle.

    def loads(self) -> list[str]:
        """Every model id this replica tried to load, in order, failed tries and reloads too."""
        return self._loader.attempts

    def refusals(self) -> list[Refusal]:
        """Every load refused because the artifact was not the one the controller checked."""
        return self._loader.refusals

    def resident(self) -> list[str]:
        """Model ids the multiplexer holds loaded on this replica, sorted."""
        return sorted(self._ahead.resident)

    def proven(self) -> list[str]:
        """Model ids this replica proved and reported, sorted."""
        return sorted(self._prover.done)

    def warmed(self) -> list[str]:
        """Model ids loaded ahead of the table that made them defaults."""
        return self._host.warmed

    def batch_stats(self) -> dict[str, dict[str, Any]]:
        """Per model id: predict calls, requests and records they carried, largest batch."""
        return {key: _stats(s) for key, s in self._host.batch_stats().items()}


def _stats(stats: BatchStats) -> dict[str, Any]:
    return asdict(stats)


def replica_log_path(app_name: str, replica: str) -> Path:
    """This replica's own log file (JSON lines), next to Ray Serve's in the session's logs:
    ``<session>/logs/serve/sigserve_<app>_<replica>.log``."""
    try:
        from ray.serve._private.logging_utils import get_serve_logs_dir

        directory = Path(get_serve_logs_dir())
    except Exception:  # not in a Ray session, or Ray moved it: a file is still better than none
        # Per user and checked (wire.private_dirs): a shared, predictable name could be
        # another user's directory, or a symlink to somewhere the replica should not write.
        directory = private_dir(Path(tempfile.gettempdir()) / f"sigserve-logs-{os.getuid()}")
    return directory / f"sigserve_{app_name}_{replica}.log"


def _log_to_file(settings: ServingSettings, replica: str) -> None:
    # serving's and wire's loggers (the table taken, loads, failures) go to this replica's own
    # file, every line naming the replica: the last link of a registration's trail.
    logs.configure(
        "serving",
        path=replica_log_path(settings.app_name, replica),
        log_format=settings.log_format,
        loggers=("serving", "wire"),
        static={"replica": replica, "app": settings.app_name},
    )

"""The models one replica holds: loaded on demand or ahead of time, predicted in batches.

``ModelHost`` is what the HTTP API runs versions on (its ``ModelBackend``). It gets a model by
its multiplexed id from ``get_model`` (in a replica, Ray Serve's ``@serve.multiplexed`` LRU
around ``PyfuncLoader``; in tests, anything with the same shape), so there is no Ray in here.

- ``serve``: records validated against the contract -> the version's own input -> one
  ``predict`` per batch of requests that may share one (``serving.batch_inputs`` says which,
  ``serving.batching`` queues them) -> output records, each request its own share.
- ``invoke``: the MLflow scoring protocol's already parsed input, predicted alone (its inputs
  come in several shapes that do not concatenate safely).
- ``stream``: one validated record -> the model's ``predict_stream``, pulled chunk by chunk
  (``serving.streaming``); never batched, each stream is a generator of its own.
- All under a per-call deadline (``serving.deadlines``): a call that outlives it is a 504, its
  version answers 503 until the call returns, and ``check_health`` fails when too many hang.
  A stream's deadline is per chunk: each pull of the generator, the first included.
- ``warm``: the versions a routing table makes defaults are loaded (and run once on their input
  example, where the artifact has one) before their model's default switches to them, so the
  first request to a new default finds its model loaded; the rest of the table applies at once.
  See ``docs/architecture.md`` ("No cold start on a default").
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from mlflow.models import ModelSignature
from mlflow.types.schema import Schema

from serving.batch_inputs import model_input, work_for
from serving.batching import DEFAULT_TIMEOUT_S, INLINE_MAX_ROWS, Batcher, BatchStats
from serving.contract import contract_for
from serving.deadlines import Deadlines
from serving.exceptions import ModelFailed, SigserveError, StreamUnsupported
from serving.frames import to_records, undeclared_columns
from serving.loader import LoadedModel
from serving.predict_call import call, predict
from serving.resolve import Target, resolve
from serving.streaming import ChunkStream, cannot_stream
from wire.routing_table import RoutingTable

logger = logging.getLogger(__name__)

GetModel = Callable[[Target], Awaitable[LoadedModel]]
# Called between a request's load and its predict; raises to refuse the request.
AfterLoad = Callable[[], None]

_DETAIL_LIMIT = 500
# How many warmed model ids a replica remembers.
_MEMORY = 1000


class ModelHost:
    def __init__(
        self,
        get_model: GetModel,
        *,
        max_batch_size: int = 32,
        batch_wait_s: float = 0.0,
        inline_below_s: float = 0.0,
        inline_max_rows: int = INLINE_MAX_ROWS,
        max_models: int = 2,
        warm_timeout_s: float = 120.0,
        on_batch: Callable[[str, int], None] | None = None,
        predict_timeout_s: float = DEFAULT_TIMEOUT_S,
        max_wedged_predicts: int = 2,
    ) -> None:
        self._get_model = get_model
        self._max_batch_size = max_batch_size
        self._predict_timeout_s = predict_timeout_s
        # One per host: ``serve`` and ``invoke`` of a version are wedged together.
        self._deadlines = Deadlines(max_wedged=max_wedged_predicts)
        self._batcher = Batcher(
            wait_s=batch_wait_s,
            inline_below_s=inline_below_s,
            inline_max_rows=inline_max_rows,
            on_batch=on_batch,
            deadlines=self._deadlines,
        )
        self._max_models = max_models
        self._warm_timeout_s = warm_timeout_s
        self._warmed: deque[str] = deque(maxlen=_MEMORY)

    async def serve(
        self,
        target: Target,
        records: list[Any],
        params: dict[str, Any] | None,
        signature: ModelSignature | None,
        *,
        after_load: AfterLoad | None = None,
        rows: Callable[[Any, Schema | None], list[Any]] = to_records,
    ) -> list[Any]:
        """Output records for ``records``, shaped by the running version's ``signature``
        (``rows`` turns a prediction into them: /serve's records unless told).

        ``after_load`` runs between the model's load and its predict; what it raises refuses
        the request (the API's re-check, ``serving.resolve.recheck``). The model is looked up
        once: a second lookup costs Ray's multiplexer a call and a count each time.
        """
        loaded = await self._load(target, after_load)
        outputs = signature.outputs if signature is not None else None

        def run(parts: list[Any], batch_params: dict[str, Any] | None) -> list[Any]:
            prediction = call(loaded, model_input(parts, signature), batch_params)
            _check_outputs(prediction, outputs)
            return rows(prediction, outputs)

        model = target.model
        wait_ms = model.batch_wait_ms
        max_batch_size = model.max_batch_size or self._max_batch_size
        return await self._batcher.predict(
            target.model_id,
            work_for(records, signature, max_batch_size),
            params,
            run,
            max_batch_size=max_batch_size,
            wait_s=None if wait_ms is None else wait_ms / 1000,
            timeout_s=self._timeout_s(target),
            # A model served from an environment of its own answers from another process.
            may_inline=not getattr(loaded.model, "remote", False),
        )

    async def invoke(
        self,
        target: Target,
        data: Any,
        params: dict[str, Any] | None,
        *,
        after_load: AfterLoad | None = None,
    ) -> Any:
        """The raw prediction for ``data``, alone, under the same deadline as ``serve`` (and
        with the same ``after_load``)."""
        loaded = await self._load(target, after_load)
        prediction = await self._deadlines.run(
            target.model_id, self._timeout_s(target), call, loaded, data, params
        )
        signature = contract_for(target.model.name, target.version.signature).signature
        _check_outputs(prediction, signature.outputs if signature is not None else None)
        return prediction

    async def stream(
        self,
        target: Target,
        records: list[Any],
        params: dict[str, Any] | None,
        signature: ModelSignature | None,
        *,
        after_load: AfterLoad | None = None,
    ) -> ChunkStream:
        """The chunks of ``predict_stream`` for one validated record, as the version's own
        input (what ``serve`` would predict alone); nothing is pulled yet. ``StreamUnsupported``
        for a model that cannot stream. Each pull has the version's predict deadline, and a
        pull past it wedges the version as a predict call does (``serving.deadlines``)."""
        loaded = await self._load(target, after_load)
        reason = cannot_stream(loaded.model)
        if reason is not None:
            name, version = target.model.name, target.version.version
            raise StreamUnsupported(
                f"version {version} of {name!r} cannot stream: {reason}; ask without "
                "'Accept: text/event-stream' for one answer",
                model=name,
                version=version,
            )
        model_id, timeout_s = target.model_id, self._timeout_s(target)

        def start() -> Any:
            data = model_input([records], signature)
            return loaded.model.predict_stream(data, params=params or None)

        async def pull(step: Callable[[], Any]) -> Any:
            return await self._deadlines.run(model_id, timeout_s, step)

        return ChunkStream(start, pull)

    def check_health(self) -> None:
        """Raise when more predict calls hang past their deadline than a replica should keep."""
        self._deadlines.check_health()

    @property
    def wedged(self) -> dict[str, int]:
        """Per model id, its predict calls running past their deadline."""
        return self._deadlines.wedged

    def _timeout_s(self, target: Target) -> float:
        return target.model.predict_timeout_s or self._predict_timeout_s

    async def warm(self, table: RoutingTable, previous: RoutingTable | None) -> None:
        """Load the live defaults ``table`` brings that ``previous`` (the table answered from)
        did not have.

        The ``prepare`` of ``serving.table_source``: those models switch to their new default
        when this returns; nothing else in ``table`` waits for it. At most as many as a
        replica keeps (loading more would evict the first ones again). Bounded by
        ``warm_timeout_s`` in all; a load that fails or takes longer is logged and left to the
        first request, which answers 503 with the cause (the defaults switch either way:
        holding a model back for good for one broken artifact would be worse).
        """
        targets = _new_defaults(table, previous)[: self._max_models]
        if not targets:
            return
        try:
            await asyncio.wait_for(self._warm_all(targets), self._warm_timeout_s)
        except TimeoutError:
            logger.warning("warming took over %.0fs; the rest load on demand", self._warm_timeout_s)

    async def _load(self, target: Target, after_load: AfterLoad | None) -> LoadedModel:
        """``target``'s model, then ``after_load``: the one lookup of a request."""
        self._deadlines.check(target.model_id)  # before a load: a wedged version takes no work
        loaded = await self._get_model(target)
        if after_load is not None:
            after_load()
        self._deadlines.check(target.model_id)  # wedged by another call while this one loaded
        return loaded

    @property
    def warmed(self) -> list[str]:
        """Model ids loaded ahead of a table, in order (the latest 1,000)."""
        return list(self._warmed)

    def batch_stats(self) -> dict[str, BatchStats]:
        return self._batcher.stats()

    async def _warm_all(self, targets: list[Target]) -> None:
        for target in targets:
            try:
                loaded = await self._get_model(target)
                self._warmed.append(target.model_id)
                example = getattr(loaded.model, "input_example", None)
                if example is not None:
                    await predict(loaded, example, None)
            except Exception as exc:
                # A failed warm-up is the first request's problem, not the table's.
                logger.warning("warming %s failed: %s", target.model_id, str(exc)[:_DETAIL_LIMIT])


def _check_outputs(prediction: Any, outputs: Schema | None) -> None:
    """Refuse a prediction with columns its version's outputs do not declare (a 500: MLflow
    never checks outputs; docs/architecture.md, "Answers within the declared outputs")."""
    extra = undeclared_columns(prediction, outputs)
    if extra:
        declared = ", ".join(repr(n) for n in (outputs.input_names() if outputs else []))
        listed = ", ".join(repr(c) for c in extra[:5]) + (" ..." if len(extra) > 5 else "")
        raise ModelFailed(
            f"the model answered column(s) {listed} that its output schema lacks "
            f"(it declares {declared})"[:_DETAIL_LIMIT]
        )


def _new_defaults(table: RoutingTable, previous: RoutingTable | None) -> list[Target]:
    """Live default versions in ``table`` whose model id ``previous`` did not serve as default."""
    before = set() if previous is None else {t.model_id for t in _defaults(previous)}
    return [t for t in _defaults(table) if t.model_id not in before]


def _defaults(table: RoutingTable) -> list[Target]:
    found = []
    for name, model in table.models.items():
        if model.default_version is None:
            continue
        try:
            found.append(resolve(table, name, None))
        except SigserveError:
            continue  # not live, or not bound to an artifact: never loaded
    return found

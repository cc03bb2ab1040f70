"""Loading defaults ahead of the table, and serving through batches: the real host, models
made in-process (the loader and Ray's LRU are tested elsewhere)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec

from serving.api import create_app
from serving.contract import contract_for
from serving.deadlines import WedgedReplica
from serving.exceptions import ModelFailed, PredictTimeout, VersionWedged
from serving.loader import LoadedModel
from serving.model_host import ModelHost
from serving.resolve import Target, resolve
from serving.server import Server
from serving.table_source import TableSource
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState


class Model:
    def __init__(self, target: Target, example: Any) -> None:
        self.target = target
        self.input_example = example
        self.predicted: list[Any] = []

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        self.predicted.append(data)
        return pd.DataFrame({"out": [str(p).upper() for p in data["prompt"]]})


class Models:
    """``get_model`` for the host: loads by model id, counts loads, can refuse one version."""

    def __init__(self, broken: set[str] | None = None) -> None:
        self.loaded: dict[str, Model] = {}
        self.loads: list[str] = []
        self.broken = broken or set()

    async def __call__(self, target: Target) -> LoadedModel:
        if target.model_id not in self.loaded:
            self.loads.append(target.model_id)
            if target.version.version in self.broken:
                raise RuntimeError("no such file: model.pkl")
            example = pd.DataFrame({"prompt": ["warm"]})
            self.loaded[target.model_id] = Model(target, example)
        return LoadedModel(self.loaded[target.model_id], Path("/nonexistent/sigserve-test"))


def version(v: str, state: VersionState = VersionState.LIVE) -> VersionEntry:
    return VersionEntry(version=v, state=state, source=f"models:/m-{v}", mlmodel_digest=v * 64)


def table(revision: int, **defaults: tuple[str, VersionState]) -> RoutingTable:
    models = {
        name: ModelEntry(name=name, default_version=v, versions={v: version(v, state)})
        for name, (v, state) in defaults.items()
    }
    return RoutingTable(revision=revision, models=models)


LIVE, QUARANTINED = VersionState.LIVE, VersionState.QUARANTINED


def loaded_versions(models: Models) -> list[str]:
    return [i.split("@")[0] for i in models.loads]


def test_new_live_defaults_are_loaded_and_warmed_with_their_example() -> None:
    models = Models()
    host = ModelHost(models, max_models=4)
    first = table(1, a=("1", LIVE), b=("1", QUARANTINED))
    asyncio.run(host.warm(first, None))
    # A quarantined default (left as default because nothing else is decided) is never loaded.
    assert loaded_versions(models) == ["a/1"]
    (model,) = models.loaded.values()
    assert list(model.predicted[0]["prompt"]) == ["warm"]

    asyncio.run(host.warm(table(2, a=("1", LIVE), b=("2", LIVE)), first))
    # a/1 was already the default: only the new one is loaded.
    assert loaded_versions(models) == ["a/1", "b/2"]


def test_no_more_defaults_are_loaded_than_a_replica_keeps() -> None:
    models = Models()
    host = ModelHost(models, max_models=2)
    asyncio.run(host.warm(table(1, a=("1", LIVE), b=("1", LIVE), c=("1", LIVE)), None))
    assert len(models.loads) == 2


def test_a_default_that_fails_to_load_is_left_to_its_first_request() -> None:
    models = Models(broken={"2"})
    host = ModelHost(models, max_models=4)
    asyncio.run(host.warm(table(1, a=("2", LIVE), b=("1", LIVE)), None))  # does not raise
    assert sorted(loaded_versions(models)) == ["a/2", "b/1"]
    assert host.warmed == [i for i in models.loads if i.startswith("b/")]


def test_a_table_is_answered_from_only_once_its_defaults_are_loaded() -> None:
    models = Models()
    host = ModelHost(models, max_models=4)
    seen: list[tuple[int | None, list[str]]] = []

    async def prepare(new: RoutingTable, held: RoutingTable | None) -> None:
        await host.warm(new, held)
        # Still the old table while the new one's defaults are being loaded.
        seen.append((source.table.revision if source.table else None, loaded_versions(models)))

    published = table(3, a=("1", LIVE))

    def controller(request: httpx.Request) -> httpx.Response:
        if int(request.url.params["after"]) < 3:
            return httpx.Response(200, content=published.model_dump_json())
        return httpx.Response(204)

    source = TableSource(
        "http://controller", transport=httpx.MockTransport(controller), prepare=prepare
    )

    async def run() -> int | None:
        await source.start(wait_s=5)
        await source.stop()
        return source.table.revision if source.table else None

    assert asyncio.run(run()) == 3
    assert seen == [(None, ["a/1"])]


def test_serve_cuts_a_batch_back_into_each_requests_records() -> None:
    models = Models()
    host = ModelHost(models, max_models=4)
    target_table = table(1, a=("1", LIVE))
    target = resolve(target_table, "a", None)

    async def run() -> list[Any]:
        return await asyncio.gather(
            *(host.serve(target, [{"prompt": p}], None, None) for p in ("x", "y", "z"))
        )

    assert asyncio.run(run()) == [[{"out": "X"}], [{"out": "Y"}], [{"out": "Z"}]]


# Batching per input kind: each request gets what it gets alone (docs/architecture.md,
# "Dynamic batching per version").


class Echo:
    """Answers each row with what it saw of it (columns, dtypes, values), and records each call
    and the thread it ran on. ``hold`` keeps the first call open until released."""

    def __init__(self, *, hold: bool = False) -> None:
        self.inputs: list[Any] = []
        self.threads: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        self.inputs.append(data)
        self.threads.append(threading.get_ident())
        self.started.set()
        self.release.wait(30)
        if isinstance(data, pd.DataFrame):
            columns = {c: (data[c].dtype, data[c].tolist()) for c in data}
            return [
                {"row": ";".join(f"{c}:{t}:{v[i]!r}" for c, (t, v) in columns.items())}
                for i in range(len(data))
            ]
        if isinstance(data, np.ndarray):
            return [{"row": f"{data.dtype}{data.shape[1:]}:{row.tolist()}"} for row in data]
        return [{"row": repr(data)}]


def host_for(model: Any, signature: ModelSignature | None, **host: Any) -> tuple[ModelHost, Target]:
    async def get_model(target: Target) -> LoadedModel:
        return LoadedModel(model, Path("/nonexistent/sigserve-test"))

    return ModelHost(get_model, **host), resolve(table(1, a=("1", LIVE)), "a", None)


def serve_together(
    host: ModelHost, target: Target, signature: ModelSignature | None, bodies: list[Any]
) -> list[Any]:
    contract = contract_for("a", signature.to_dict() if signature is not None else None)

    async def run() -> list[Any]:
        # Requests that arrive while nothing predicts yet: one drain takes them all at once.
        requests = [contract.parse(body) for body in bodies]
        return await asyncio.gather(
            *(host.serve(target, r.records, r.params, signature) for r in requests)
        )

    return asyncio.run(run())


TENSOR = ModelSignature(Schema([TensorSpec(np.dtype("float64"), (-1, 2))]))


def test_tensor_requests_batched_together_each_get_rows_of_their_own_tensor() -> None:
    model = Echo()
    host, target = host_for(model, TENSOR)
    bodies = [{"inputs": [[1, 1], [2, 2]]}, {"inputs": [[10, 10], [20, 20]]}]
    answers = serve_together(host, target, TENSOR, bodies)
    assert answers == [
        [{"row": "float64(2,):[1.0, 1.0]"}, {"row": "float64(2,):[2.0, 2.0]"}],
        [{"row": "float64(2,):[10.0, 10.0]"}, {"row": "float64(2,):[20.0, 20.0]"}],
    ]
    # One predict for both: their rows concatenated along axis 0.
    assert [i.shape for i in model.inputs] == [(4, 2)]


def test_tensors_whose_trailing_shapes_differ_are_never_merged() -> None:
    model = Echo()
    signature = ModelSignature(Schema([TensorSpec(np.dtype("float64"), (-1, -1))]))
    host, target = host_for(model, signature)
    bodies = [{"inputs": [[1, 1]]}, {"inputs": [[2, 2, 2]]}]
    answers = serve_together(host, target, signature, bodies)
    assert answers == [
        [{"row": "float64(2,):[1.0, 1.0]"}],
        [{"row": "float64(3,):[2.0, 2.0, 2.0]"}],
    ]
    assert sorted(i.shape for i in model.inputs) == [(1, 2), (1, 3)]


def test_dicts_of_tensors_are_never_merged() -> None:
    model = Echo()
    signature = ModelSignature(
        Schema(
            [
                TensorSpec(np.dtype("float64"), (-1,), "a"),
                TensorSpec(np.dtype("float64"), (-1,), "b"),
            ]
        )
    )
    host, target = host_for(model, signature)
    bodies = [{"inputs": {"a": [1], "b": [2]}}, {"inputs": {"a": [3], "b": [4]}}]
    serve_together(host, target, signature, bodies)
    # Each predict call saw one request's tensors, never a mix or a batch.
    assert sorted(sorted((k, v.tolist()) for k, v in i.items()) for i in model.inputs) == [
        [("a", [1.0]), ("b", [2.0])],
        [("a", [3.0]), ("b", [4.0])],
    ]


OPTIONAL = ModelSignature(
    Schema([ColSpec("long", "m"), ColSpec("long", "n", required=False)]),
)


def test_a_request_that_omits_an_optional_column_never_sees_it_as_null() -> None:
    model = Echo()
    host, target = host_for(model, OPTIONAL)
    answers = serve_together(host, target, OPTIONAL, [{"m": 1}, {"m": 2, "n": 5}, {"m": 3}])
    # Alone, the first request's frame has no column n: batched, it must not either.
    assert answers == [
        [{"row": "m:int64:1"}],
        [{"row": "m:int64:2;n:int64:5"}],
        [{"row": "m:int64:3"}],
    ]


def test_a_null_in_one_request_does_not_change_the_dtype_another_request_sees() -> None:
    model = Echo()
    host, target = host_for(model, OPTIONAL)
    answers = serve_together(host, target, OPTIONAL, [{"m": 1, "n": 5}, {"m": 2, "n": None}])
    assert answers[0] == [{"row": "m:int64:1;n:int64:5"}]
    assert answers[1] == [{"row": "m:int64:2;n:Int64:<NA>"}]


def test_requests_to_a_model_without_signature_are_never_merged() -> None:
    model = Echo()
    host, target = host_for(model, None)
    answers = serve_together(host, target, None, [{"a": 1}, {"b": "x"}, {"a": 2}])
    assert answers == [[{"row": "a:int64:1"}], [{"row": "b:str:'x'"}], [{"row": "a:int64:2"}]]
    assert len(model.inputs) == 3


def test_a_large_request_to_a_fast_model_runs_off_the_event_loop() -> None:
    model = Echo()
    host, target = host_for(model, OPTIONAL, inline_below_s=0.05, max_batch_size=20_000)

    async def run() -> int:
        for m in range(3):  # a fast model: its small calls go inline
            await host.serve(target, [{"m": m}], None, OPTIONAL)
        await host.serve(target, [{"m": m} for m in range(10_000)], None, OPTIONAL)
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    assert model.threads[1:3] == [loop_thread, loop_thread]
    # 10,000 records: however fast each one, not on the loop that takes every other request.
    assert model.threads[3] != loop_thread


# A predict that hangs (docs/architecture.md, "A predict that hangs").


class Hangs:
    """Stands for a model whose predict sleeps 300 s: it blocks until ``release`` is set (at
    the latest when the test ends), then answers each row."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        self.calls += 1
        self.release.wait(300)
        return pd.DataFrame({"out": [f"answered {self.calls}"] * len(data)})


def hosts_models(
    hung: dict[str, Hangs], *, timeout_s: float | None = 0.2, **host: Any
) -> tuple[ModelHost, dict[str, Target]]:
    """A host holding one model per name of ``hung`` that hangs, and ``fast`` that answers;
    each model's predict timeout comes from the routing table (the model tag), as in a
    replica."""
    models: dict[str, Any] = {**hung, "fast": Echo()}

    async def get_model(target: Target) -> LoadedModel:
        return LoadedModel(models[target.model.name], Path("/nonexistent/sigserve-test"))

    entries = {
        name: ModelEntry(
            name=name,
            default_version="1",
            versions={"1": version("1")},
            predict_timeout_s=timeout_s,
        )
        for name in models
    }
    routing = RoutingTable(revision=1, models=entries)
    return ModelHost(get_model, **host), {n: resolve(routing, n, None) for n in models}


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``condition`` until it holds, failing the test after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def released(test: Coroutine[Any, Any, None], *hung: Hangs) -> None:
    """Run ``test``, then release the hung calls before the loop closes: ``asyncio.run`` waits
    for the worker threads, as a replica's shutdown would."""

    async def run() -> None:
        try:
            await test
        finally:
            for model in hung:
                model.release.set()

    asyncio.run(run())


def test_a_predict_that_hangs_answers_504_and_wedges_only_its_own_version() -> None:
    hung = Hangs()
    # The host's default is 300 s: the model's own timeout (its tag) is what fires.
    host, targets = hosts_models({"slow": hung}, timeout_s=0.2, predict_timeout_s=300)
    slow, fast = targets["slow"], targets["fast"]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = asyncio.create_task(host.serve(slow, [{"prompt": "a"}], None, None))
        await until(lambda: hung.calls == 1)
        # Queued behind the hung call: answered 503 when the call is found hung, not never.
        queued = asyncio.create_task(host.serve(slow, [{"prompt": "b"}], None, None))
        with pytest.raises(PredictTimeout) as timeout:
            await asyncio.wait_for(first, 10)
        assert loop.time() - started < 5
        assert timeout.value.status == 504 and timeout.value.extensions["model"] == "slow"
        with pytest.raises(VersionWedged):
            await asyncio.wait_for(queued, 10)
        # Another model on the same host keeps answering meanwhile.
        assert await host.serve(fast, [{"prompt": "x"}], None, None) == [{"row": "prompt:str:'x'"}]
        # The wedged version takes no work, on either route, until its call returns.
        with pytest.raises(VersionWedged) as wedged:
            await host.serve(slow, [{"prompt": "c"}], None, None)
        assert wedged.value.status == 503 and wedged.value.retry_after is not None
        with pytest.raises(VersionWedged):
            await host.invoke(slow, pd.DataFrame({"prompt": ["d"]}), None)
        assert hung.calls == 1
        assert host.wedged == {slow.model_id: 1}

        hung.release.set()  # the call returns at last: the version takes work again
        await until(lambda: not host.wedged)
        assert await host.serve(slow, [{"prompt": "e"}], None, None) == [{"out": "answered 2"}]

    released(run(), hung)


def test_invocations_have_the_same_deadline() -> None:
    hung = Hangs()
    host, targets = hosts_models({"slow": hung}, timeout_s=0.2)

    async def run() -> None:
        with pytest.raises(PredictTimeout):
            await asyncio.wait_for(
                host.invoke(targets["slow"], pd.DataFrame({"prompt": ["a"]}), None), 10
            )
        with pytest.raises(VersionWedged):
            await host.serve(targets["slow"], [{"prompt": "b"}], None, None)

    released(run(), hung)


def test_the_health_check_fails_once_more_calls_hang_than_allowed() -> None:
    hung = {name: Hangs() for name in ("a", "b", "c")}
    # The setting is the host's default timeout; the table sets none.
    host, targets = hosts_models(hung, timeout_s=None, predict_timeout_s=0.2, max_wedged_predicts=1)

    async def wedge(name: str) -> None:
        with pytest.raises(PredictTimeout):
            await asyncio.wait_for(host.serve(targets[name], [{"prompt": "a"}], None, None), 10)

    async def run() -> None:
        host.check_health()
        await wedge("a")
        host.check_health()  # one hung call: within what a replica may keep
        await wedge("b")
        with pytest.raises(WedgedReplica, match="2 predict calls"):
            host.check_health()
        hung["a"].release.set()
        hung["b"].release.set()
        await until(lambda: not host.wedged)
        host.check_health()  # healthy again once they returned

    released(run(), *hung.values())


def test_the_replica_health_check_is_the_hosts() -> None:
    hung = {"a": Hangs(), "b": Hangs()}
    host, targets = hosts_models(hung, max_wedged_predicts=1)
    replica = SimpleNamespace(_host=host)  # a Server needs a Ray replica; its host does not

    async def run() -> None:
        await Server.check_health(replica)  # type: ignore[arg-type]
        for target in targets.values():
            if target.model.name in hung:
                with pytest.raises(PredictTimeout):
                    await host.serve(target, [{"prompt": "a"}], None, None)
        with pytest.raises(WedgedReplica):
            await Server.check_health(replica)  # type: ignore[arg-type]

    released(run(), *hung.values())


def test_over_http_a_hung_predict_is_a_504_problem_and_its_version_503_with_retry_after() -> None:
    hung = Hangs()
    host, targets = hosts_models({"slow": hung}, timeout_s=0.2)
    routing = RoutingTable(revision=1, models={n: t.model for n, t in targets.items()})

    async def run() -> None:
        source = TableSource(
            "http://controller", transport=httpx.MockTransport(lambda _: httpx.Response(204))
        )
        source.offer(routing)
        transport = httpx.ASGITransport(app=create_app(source, host))
        async with httpx.AsyncClient(transport=transport, base_url="http://serving") as client:
            timed_out = await client.post("/models/slow/serve", json={"prompt": "a"})
            assert timed_out.status_code == 504
            assert timed_out.headers["content-type"] == "application/problem+json"
            assert timed_out.json()["type"] == "urn:sigserve:problem:predict-timeout"
            assert timed_out.json()["model"] == "slow"
            wedged = await client.post("/models/slow/serve", json={"prompt": "b"})
            assert wedged.status_code == 503 and wedged.headers["retry-after"] == "5"
            assert wedged.json()["type"] == "urn:sigserve:problem:version-wedged"
            other = await client.post("/models/fast/serve", json={"prompt": "x"})
            assert other.status_code == 200

    released(run(), hung)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/models/slow/serve", {"prompt": "b"}),
        ("/models/slow/invocations", {"dataframe_records": [{"prompt": "b"}]}),
    ],
)
def test_a_request_whose_load_ends_after_its_version_wedged_is_refused_not_predicted(
    path: str, body: Any
) -> None:
    """A request looks its model up once: a call that wedges the version while that lookup
    waits (a load behind Ray's multiplexer) must still keep the request off the model."""
    hung = Hangs()
    loading, release = asyncio.Event(), asyncio.Event()

    async def get_model(target: Target) -> LoadedModel:
        if hung.calls and not release.is_set():  # a lookup made while the first call hangs
            loading.set()
            await release.wait()
        return LoadedModel(hung, Path("/nonexistent/sigserve-test"))

    entry = ModelEntry(
        name="slow", default_version="1", versions={"1": version("1")}, predict_timeout_s=0.2
    )
    routing = RoutingTable(revision=1, models={"slow": entry})

    async def run() -> None:
        source = TableSource(
            "http://controller", transport=httpx.MockTransport(lambda _: httpx.Response(204))
        )
        source.offer(routing)
        transport = httpx.ASGITransport(app=create_app(source, ModelHost(get_model)))
        async with httpx.AsyncClient(transport=transport, base_url="http://serving") as client:
            first = asyncio.create_task(client.post("/models/slow/serve", json={"prompt": "a"}))
            await until(lambda: hung.calls == 1)
            second = asyncio.create_task(client.post(path, json=body))
            await asyncio.wait_for(loading.wait(), 10)
            assert (await asyncio.wait_for(first, 10)).status_code == 504  # now wedged
            release.set()
            refused = await asyncio.wait_for(second, 10)
            assert refused.status_code == 503, refused.text
            assert refused.json()["type"] == "urn:sigserve:problem:version-wedged"
            assert hung.calls == 1

    released(run(), hung)


# A prediction outside the version's declared outputs is the model's failure, not an answer
# (issue 17: MLflow never checks outputs; a client must not get a 200 beyond the contract).

DECLARED = ModelSignature(Schema([ColSpec("string", "prompt")]), Schema([ColSpec("string", "out")]))


class Chatty:
    """Answers its declared ``out`` and a ``debug`` column nobody declared."""

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        return pd.DataFrame({"out": list(data["prompt"]), "debug": ["x"] * len(data)})


def test_an_answer_with_a_column_the_output_schema_lacks_is_a_model_failure() -> None:
    host, target = host_for(Chatty(), DECLARED)
    with pytest.raises(ModelFailed, match=r"'debug'.*output schema"):
        serve_together(host, target, DECLARED, [{"prompt": "a"}])


def test_invoke_holds_a_prediction_to_the_output_schema_too() -> None:
    """``/invocations`` hands the raw prediction on: the version's signature, as the routing
    table carries it, is what it is held to."""
    host, _ = host_for(Chatty(), DECLARED)
    entry = VersionEntry(version="1", state=LIVE, source="models:/m-1", mlmodel_digest="1" * 64,
                         signature=DECLARED.to_dict())
    routing = RoutingTable(
        revision=1, models={"a": ModelEntry(name="a", default_version="1", versions={"1": entry})}
    )
    target = resolve(routing, "a", None)
    with pytest.raises(ModelFailed, match=r"'debug'.*output schema"):
        asyncio.run(host.invoke(target, pd.DataFrame({"prompt": ["a"]}), None))


def test_an_answer_of_exactly_the_declared_columns_is_served() -> None:
    host, target = host_for(Echo(), ModelSignature(Schema([ColSpec("string", "prompt")]),
                                                   Schema([ColSpec("string", "row")])))
    assert serve_together(host, target, None, [{"prompt": "a"}]) == [[{"row": "prompt:str:'a'"}]]

"""``predict_stream`` over Server-Sent Events on ``/serve``, with stand-in streaming models.

Whole answers are read through a test client; what needs a real socket (events arriving while
the model still runs, a client that leaves) runs the app under uvicorn on a free port. Models
that wait do so on events the test sets, never on a timer.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
import uvicorn
from fastapi.testclient import TestClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import ChatModel, PythonModel, ResponsesAgent
from mlflow.types.llm import (
    ChatChoice,
    ChatChoiceDelta,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatMessage,
)
from mlflow.types.responses import (
    ResponsesAgentRequest,
    ResponsesAgentResponse,
    ResponsesAgentStreamEvent,
)
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from serving.api import create_app
from serving.loader import LoadedModel
from serving.model_host import ModelHost
from serving.recorder import NoRecorder
from serving.resolve import Target
from serving.table_source import TableSource
from sigserve.ports import free_port
from tests.unit.test_serving_api import REASON, TABLE, Controller, EchoModel
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState

SSE = {"Accept": "text/event-stream"}
WAIT_S = 10.0  # bounds a wait that should end at once; only reached when a test fails


@pytest.fixture(autouse=True)
def traces_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """MLflow traces a ChatModel's and a ResponsesAgent's predict to the tracking store, by
    default ``sqlite:///mlflow.db`` and ``./mlruns`` in the working directory: the test's own,
    so a run leaves nothing in the checkout."""
    monkeypatch.chdir(tmp_path)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'traces.db'}")
    yield
    mlflow.set_tracking_uri(before)


def parse_events(text: str) -> list[tuple[str, str]]:
    """(event type, data) of each event in ``text`` (the WHATWG rules this API needs)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        kind, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                kind = value
            elif field == "data":
                data.append(value)
        if data:
            events.append((kind, "\n".join(data)))
    return events


class Streamer(EchoModel):
    """The echo, streaming: one chunk per word of the prompt, each tagged with the version.

    ``script`` may replace what it yields; ``closed`` is set when the generator is closed or
    runs out, ``pulls`` counts the chunks the server took from it.
    """

    def __init__(self, target: Target, calls: list[Any], script: Callable[..., Iterator[Any]]):
        super().__init__(target, calls)
        self.script = script
        self.closed = threading.Event()
        self.pulls = 0

    def predict_stream(self, data: Any, params: dict[str, Any] | None = None) -> Iterator[Any]:
        self.calls.append((self.target, data, params))
        ran = f"{self.target.model.name}/{self.target.version.version}"
        try:
            for chunk in self.script(ran, data, params):
                self.pulls += 1
                yield chunk
        finally:
            self.closed.set()


def words(ran: str, data: Any, params: dict[str, Any] | None) -> Iterator[Any]:
    suffix = (params or {}).get("suffix", "")
    for word in str(data["prompt"][0]).split():
        yield {"token": word + suffix, "ran": ran}


class Backend(ModelHost):
    """The real model host; its models are ``Streamer``s (or plain echoes, which do not
    stream, for the versions in ``plain``)."""

    def __init__(
        self,
        script: Callable[..., Iterator[Any]] = words,
        *,
        plain: tuple[str, ...] = (),
        predict_timeout_s: float = 60.0,
    ) -> None:
        self.calls: list[Any] = []
        self.models: list[Streamer] = []

        async def get_model(target: Target) -> LoadedModel:
            if target.version.version in plain:
                model: Any = EchoModel(target, self.calls)
            else:
                model = Streamer(target, self.calls, script)
                self.models.append(model)
            return LoadedModel(model, Path("/nonexistent/sigserve-test"))

        super().__init__(get_model, predict_timeout_s=predict_timeout_s)


class Requests(NoRecorder):
    """The metric's calls, and an event per call for tests that wait on one."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []
        self.recorded = threading.Event()

    def request(self, model: str, version: str, status: int, seconds: float) -> None:
        self.seen.append((model, version, status))
        self.recorded.set()


def client_for(backend: Backend, recorder: Requests | None = None) -> TestClient:
    source = TableSource("http://controller", transport=httpx.MockTransport(Controller()))
    source.offer(TABLE)
    app = create_app(source, backend, recorder=recorder)
    return TestClient(app, raise_server_exceptions=False)


def test_chunks_are_events_in_order_then_done() -> None:
    backend, recorder = Backend(), Requests()
    with client_for(backend, recorder) as client:
        body = {"inputs": {"prompt": "to be or"}, "params": {"suffix": "!"}}
        response = client.post("/models/echo/serve", json=body, headers=SSE)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert parse_events(response.text) == [
            ("message", json.dumps({"token": t, "ran": "echo/1"}, separators=(",", ":")))
            for t in ("to!", "be!", "or!")
        ] + [("message", "[DONE]")]
        (call,) = backend.calls
        # The version's own input for one record, as /serve hands it to predict, and params.
        assert call[1].to_dict("records") == [{"prompt": "to be or"}]
        assert call[2] == {"suffix": "!"}
        assert backend.models[0].closed.is_set()
        # Counted once, when the stream ended.
        assert recorder.seen == [("echo", "1", 200)]


@pytest.mark.parametrize(
    ("path", "headers", "ran"),
    [
        ("/models/echo/versions/2/serve", {}, "echo/2"),
        ("/models/echo/serve", {"serve_multiplexed_model_id": "2"}, "echo/2"),
        ("/models/echo/serve", {}, "echo/1"),
    ],
)
def test_the_version_is_chosen_as_for_json(path: str, headers: dict[str, str], ran: str) -> None:
    with client_for(Backend()) as client:
        response = client.post(path, json={"prompt": "a"}, headers={**SSE, **headers})
        first = json.loads(parse_events(response.text)[0][1])
        assert first == {"token": "a", "ran": ran}


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "application/json", "application/json, text/event-stream;q=0.5"],
)
def test_json_unless_a_stream_is_preferred(accept: str | None) -> None:
    backend = Backend()
    with client_for(backend) as client:
        headers = {"Accept": accept} if accept else {}
        response = client.post("/models/echo/serve", json={"prompt": "a"}, headers=headers)
        assert response.status_code == 200
        assert response.json() == [{"out": "echo/1:a"}]


def test_the_gate_and_the_contract_answer_before_any_event() -> None:
    backend, recorder = Backend(), Requests()
    with client_for(backend, recorder) as client:
        quarantined = client.post("/models/echo/versions/3/serve", json={}, headers=SSE)
        assert quarantined.status_code == 409
        assert quarantined.json()["reasons"] == [REASON]
        pending = client.post("/models/echo/versions/4/serve", json={"prompt": "a"}, headers=SSE)
        assert (pending.status_code, pending.headers["retry-after"]) == (503, "1")
        assert client.post("/models/nope/serve", json={}, headers=SSE).status_code == 404
        invalid = client.post("/models/echo/serve", json={"prompt": 1}, headers=SSE)
        assert invalid.status_code == 422
        assert invalid.json()["errors"][0]["field"] == "prompt"
        several = client.post(
            "/models/echo/serve", json=[{"prompt": "a"}, {"prompt": "b"}], headers=SSE
        )
        assert several.status_code == 422
        assert several.json()["errors"] == [
            {
                "field": "body",
                "reason": "holds 2 records; a stream takes one (predict_stream reads one input)",
            }
        ]
        for answer in (quarantined, pending, invalid, several):
            assert answer.headers["content-type"] == "application/problem+json"
        assert backend.calls == []
        assert [s for _, _, s in recorder.seen] == [409, 503, 404, 422, 422]


def test_a_model_that_cannot_stream_is_406_naming_why() -> None:
    backend = Backend(plain=("2",))
    with client_for(backend) as client:
        response = client.post("/models/echo/versions/2/serve", json={"prompt": "a"}, headers=SSE)
        assert response.status_code == 406, response.text
        problem = response.json()
        assert problem["type"] == "urn:sigserve:problem:stream-unsupported"
        assert "has no predict_stream" in problem["detail"]
        assert "without 'Accept: text/event-stream'" in problem["detail"]
        # The same version still answers JSON.
        plain = client.post("/models/echo/versions/2/serve", json={"prompt": "a"})
        assert plain.json() == [{"out": "echo/2:a"}]


def failing_at(index: int, error: Exception) -> Callable[..., Iterator[Any]]:
    def script(ran: str, data: Any, params: dict[str, Any] | None) -> Iterator[Any]:
        for i in range(3):
            if i == index:
                raise error
            yield {"i": i}

    return script


@pytest.mark.parametrize(
    ("error", "status", "slug"),
    [
        (ValueError("bad prompt"), 500, "model-failed"),
        (MlflowException.invalid_parameter_value("schema says no"), 422, "model-rejected-input"),
    ],
)
def test_a_model_that_fails_before_its_first_chunk_gets_a_plain_problem(
    error: Exception, status: int, slug: str
) -> None:
    recorder = Requests()
    with client_for(Backend(failing_at(0, error)), recorder) as client:
        response = client.post("/models/echo/serve", json={"prompt": "a"}, headers=SSE)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == f"urn:sigserve:problem:{slug}"
        assert recorder.seen == [("echo", "1", status)]


def test_a_model_that_fails_mid_stream_ends_it_with_an_error_event() -> None:
    backend, recorder = Backend(failing_at(2, ValueError("ran out of ideas"))), Requests()
    with client_for(backend, recorder) as client:
        response = client.post("/models/echo/serve", json={"prompt": "a"}, headers=SSE)
        assert response.status_code == 200  # sent with the first chunk, before the failure
        events = parse_events(response.text)
        assert events[:2] == [("message", '{"i":0}'), ("message", '{"i":1}')]
        kind, data = events[2]
        assert kind == "error" and len(events) == 3  # no [DONE] after it
        problem = json.loads(data)
        assert problem["type"] == "urn:sigserve:problem:model-failed"
        assert problem["status"] == 500
        assert problem["detail"] == "the model raised ValueError: ran out of ideas"
        assert problem["error_code"] == "INTERNAL_ERROR"
        assert "Traceback" not in response.text
        assert recorder.seen == [("echo", "1", 500)]


def test_a_chunk_that_is_not_json_ends_the_stream_with_an_error_event() -> None:
    def script(ran: str, data: Any, params: dict[str, Any] | None) -> Iterator[Any]:
        yield "fine"
        yield object()

    with client_for(Backend(script)) as client:
        response = client.post("/models/echo/serve", json={"prompt": "a"}, headers=SSE)
        events = parse_events(response.text)
        assert events[0] == ("message", '"fine"')
        assert events[1][0] == "error"
        assert "not JSON" in json.loads(events[1][1])["detail"]


def test_a_stream_that_stalls_past_the_deadline_ends_with_504_and_wedges_until_it_returns() -> None:
    release = threading.Event()

    def stalls(ran: str, data: Any, params: dict[str, Any] | None) -> Iterator[Any]:
        yield {"i": 0}
        release.wait(WAIT_S)  # the stall: a model that stopped answering
        yield {"i": 1}
        yield {"i": 2}

    backend = Backend(stalls, predict_timeout_s=0.2)
    with client_for(backend) as client:
        response = client.post("/models/echo/serve", json={"prompt": "a"}, headers=SSE)
        events = parse_events(response.text)
        assert events[0] == ("message", '{"i":0}')
        assert events[1][0] == "error"
        assert json.loads(events[1][1])["type"] == "urn:sigserve:problem:predict-timeout"
        # Its pull still runs in its thread: the version takes no work meanwhile.
        wedged = client.post("/models/echo/serve", json={"prompt": "a"})
        assert wedged.status_code == 503
        assert wedged.json()["type"] == "urn:sigserve:problem:version-wedged"
        release.set()
        # When the stalled pull returns, the generator is closed, never pulled again.
        assert backend.models[0].closed.wait(WAIT_S)
        assert backend.models[0].pulls == 2


def test_a_reader_that_does_not_take_events_holds_the_model_back() -> None:
    """Backpressure: the next chunk is pulled only once the previous one was handed over."""

    async def scenario() -> None:
        pulled: list[int] = []

        def counting(ran: str, data: Any, params: dict[str, Any] | None) -> Iterator[Any]:
            for i in range(100):
                pulled.append(i)
                yield {"i": i}

        backend = Backend(counting)
        source = TableSource("http://controller", transport=httpx.MockTransport(Controller()))
        source.offer(TABLE)
        app = create_app(source, backend)
        body = json.dumps({"prompt": "a"}).encode()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/models/echo/serve",
            "raw_path": b"/models/echo/serve",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"accept", b"text/event-stream"), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        requested, gone = False, asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []
        reader_took_one = asyncio.Event()
        reader_waits = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body":
                reader_took_one.set()
                await reader_waits.wait()  # a reader that takes nothing more for now

        await source.start(wait_s=2)
        call = asyncio.create_task(app(scope, receive, send))
        await asyncio.wait_for(reader_took_one.wait(), WAIT_S)
        # The first event is held by the reader; at most the one after it was pulled.
        for _ in range(50):
            await asyncio.sleep(0)  # let any pull that would happen happen
        assert pulled in ([0], [0, 1])
        gone.set()  # the reader leaves
        reader_waits.set()
        await asyncio.wait_for(call, WAIT_S)
        assert backend.models[0].closed.wait(WAIT_S)
        assert len(pulled) < 100
        await source.stop()

    asyncio.run(scenario())


class Served:
    """The app under uvicorn on a free port, for what needs a real socket."""

    def __init__(self, backend: Backend, recorder: Requests) -> None:
        source = TableSource("http://controller", transport=httpx.MockTransport(Controller()))
        source.offer(TABLE)
        app = create_app(source, backend, recorder=recorder)
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="serving-under-test")

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + WAIT_S
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self.url

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT_S)


def test_events_arrive_while_the_model_still_runs_and_a_client_that_leaves_stops_it() -> None:
    go_on = threading.Event()

    def waits(ran: str, data: Any, params: dict[str, Any] | None) -> Iterator[Any]:
        yield {"i": 0}
        go_on.wait(WAIT_S)  # the next chunk only once the test says so
        yield {"i": 1}
        yield {"i": 2}

    backend, recorder = Backend(waits), Requests()
    with Served(backend, recorder) as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        with client.stream("POST", "/models/echo/serve", json={"prompt": "a"}, headers=SSE) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            # The model has not yielded its second chunk: the first arrived on its own.
            assert next(lines) == 'data: {"i":0}'
            assert not go_on.is_set()
        # The client left while the model was between chunks: the stream is ended at once.
        assert recorder.recorded.wait(WAIT_S)
        assert recorder.seen == [("echo", "1", 499)]
        model = backend.models[0]
        assert not model.closed.is_set()  # its pull still runs: it is closed after
        go_on.set()
        assert model.closed.wait(WAIT_S)
        assert model.pulls == 2  # chunk 1 was made, then the generator closed at its yield


class Words(PythonModel):
    """A real pyfunc that streams: MLflow's ``PyFuncModel.predict_stream`` wraps it in a
    prediction context that it enters at the first chunk and leaves after the last."""

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        return model_input

    def predict_stream(
        self, context: Any, model_input: Any, params: dict[str, Any] | None = None
    ) -> Iterator[Any]:
        for word in str(model_input["prompt"]).split():
            yield {"token": word * int((params or {}).get("repeat", 1))}


def stream_served(model: Any, directory: Path, body: Any) -> list[tuple[str, str]]:
    """The events ``/serve`` answers for ``body`` with a loaded pyfunc ``model`` as the
    default version of a model "m" whose contract is its signature."""
    signature = model.metadata.signature.to_dict()

    async def get_model(target: Target) -> LoadedModel:
        return LoadedModel(model, directory)

    entry = VersionEntry(
        version="1",
        state=VersionState.LIVE,
        signature=signature,
        source="models:/m-1",
        mlmodel_digest="a" * 64,
    )
    table = RoutingTable(
        revision=1,
        models={
            "m": ModelEntry(
                name="m", default_version="1", contract=signature, versions={"1": entry}
            )
        },
    )
    source = TableSource("http://controller", transport=httpx.MockTransport(Controller()))
    source.offer(table)
    with TestClient(create_app(source, ModelHost(get_model))) as client:
        response = client.post("/models/m/serve", json=body, headers=SSE)
    assert response.status_code == 200, response.text
    return parse_events(response.text)


def test_a_real_pyfunc_streams_what_it_streams_in_process(tmp_path: Path) -> None:
    signature = ModelSignature(
        Schema([ColSpec("string", "prompt")]),
        Schema([ColSpec("string", "answer")]),
        ParamSchema([ParamSpec("repeat", "long", 1)]),
    )
    mlflow.pyfunc.save_model(
        tmp_path / "words", python_model=Words(), signature=signature, pip_requirements=[]
    )
    model = mlflow.pyfunc.load_model(str(tmp_path / "words"))
    own = list(model.predict_stream({"prompt": "one two three"}, params={"repeat": 2}))

    body = {"inputs": {"prompt": "one two three"}, "params": {"repeat": 2}}
    streamed = stream_served(model, tmp_path / "words", body)
    assert streamed[-1] == ("message", "[DONE]"), streamed
    assert [json.loads(data) for _, data in streamed[:-1]] == own
    assert own == [{"token": "oneone"}, {"token": "twotwo"}, {"token": "threethree"}]


class Chat(ChatModel):
    def predict(self, context: Any, messages: Any, params: Any) -> ChatCompletionResponse:
        reply = ChatMessage(role="assistant", content=messages[-1].content)
        return ChatCompletionResponse(choices=[ChatChoice(index=0, message=reply)])

    def predict_stream(self, context: Any, messages: Any, params: Any) -> Iterator[Any]:
        for word in messages[-1].content.split():
            delta = ChatChoiceDelta(role="assistant", content=word)
            yield ChatCompletionChunk(choices=[ChatChunkChoice(index=0, delta=delta)])


class Agent(ResponsesAgent):
    def predict(self, request: ResponsesAgentRequest) -> ResponsesAgentResponse:
        return ResponsesAgentResponse(output=[self.create_text_output_item("hi", "1")])

    def predict_stream(self, request: ResponsesAgentRequest) -> Iterator[Any]:
        text = str(request.input[-1].content)
        for word in text.split():
            yield ResponsesAgentStreamEvent(**self.create_text_delta(word, "1"))
        item = self.create_text_output_item(text, "1")
        yield ResponsesAgentStreamEvent(type="response.output_item.done", item=item)


@pytest.mark.parametrize(
    ("python_model", "body"),
    [
        (Chat(), {"messages": [{"role": "user", "content": "one two"}]}),
        (Agent(), {"input": [{"role": "user", "content": "one two"}]}),
    ],
    ids=["ChatModel", "ResponsesAgent"],
)
def test_mlflows_chat_and_agent_interfaces_stream_as_in_process(
    python_model: Any, body: Any, tmp_path: Path
) -> None:
    """Their signatures are MLflow's own (messages, input...), taken as the contract."""
    mlflow.pyfunc.save_model(tmp_path / "m", python_model=python_model, pip_requirements=[])
    model = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    own = [_timeless(c) for c in model.predict_stream(body)]
    streamed = stream_served(model, tmp_path / "m", body)
    assert streamed[-1] == ("message", "[DONE]"), streamed
    assert [_timeless(json.loads(data)) for _, data in streamed[:-1]] == own
    assert len(own) >= 2


def _timeless(chunk: dict[str, Any]) -> dict[str, Any]:
    """A chunk without its ``created`` time (a chat chunk is stamped when it is made)."""
    return {k: v for k, v in chunk.items() if k != "created"}


def test_openapi_shows_the_stream_beside_the_json_answer() -> None:
    with client_for(Backend()) as client:
        operation = client.get("/openapi.json").json()["paths"]["/models/echo/serve"]["post"]
    answers = operation["responses"]["200"]["content"]
    assert set(answers) == {"application/json", "text/event-stream"}
    assert "data: [DONE]" in answers["text/event-stream"]["schema"]["description"]
    assert "406" in operation["responses"]


def test_a_slow_chunk_is_waited_for_with_comment_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy's idle timeout must not cut a stream whose model is slow between chunks."""
    monkeypatch.setattr("serving.streaming.KEEPALIVE_S", 0.05, raising=False)
    go_on = threading.Event()

    def slow(ran: str, data: Any, params: dict[str, Any] | None) -> Iterator[Any]:
        yield {"i": 0}
        go_on.wait(WAIT_S)
        yield {"i": 1}

    with (
        Served(Backend(slow), Requests()) as url,
        httpx.Client(base_url=url, timeout=WAIT_S) as client,
        client.stream("POST", "/models/echo/serve", json={"prompt": "a"}, headers=SSE) as r,
    ):
        lines = r.iter_lines()
        assert next(lines) == 'data: {"i":0}'
        assert [next(lines), next(lines)] == ["", ": ping"]  # while the model waits
        go_on.set()
        rest = [line for line in lines if line and line != ": ping"]
    assert rest == ['data: {"i":1}', "data: [DONE]"]

"""The HTTP API, run in a test client with a stand-in controller and an in-process backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from serving.api import create_app
from serving.loader import LoadedModel
from serving.model_host import ModelHost
from serving.model_ids import Artifact, parse_model_id
from serving.resolve import Target, resolve
from serving.table_source import TableSource
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState

V1 = ModelSignature(
    Schema([ColSpec("string", "prompt")]),
    Schema([ColSpec("string", "out")]),
    ParamSchema([ParamSpec("suffix", "string", "!")]),
).to_dict()
V2 = ModelSignature(
    Schema([ColSpec("string", "prompt"), ColSpec("integer", "n", required=False)]),
    Schema([ColSpec("string", "out")]),
    ParamSchema([ParamSpec("suffix", "string", "?")]),
).to_dict()
V3 = ModelSignature(
    Schema([ColSpec("string", "text_to_translate")]), Schema([ColSpec("string", "out")])
).to_dict()
REASON = "input 'prompt' (string, required) is missing; this version reads 'text_to_translate'"


def checked(version: str) -> dict[str, str]:
    """Where a live version's checked artifact is, as the controller writes it."""
    return {"source": f"models:/m-echo{version}", "mlmodel_digest": version * 64}


TABLE = RoutingTable(
    revision=4,
    models={
        "echo": ModelEntry(
            name="echo",
            default_version="1",
            contract=V1,
            versions={
                "1": VersionEntry(
                    version="1", state=VersionState.LIVE, signature=V1, **checked("1")
                ),
                "2": VersionEntry(
                    version="2", state=VersionState.LIVE, signature=V2, **checked("2")
                ),
                "3": VersionEntry(
                    version="3", state=VersionState.QUARANTINED, reasons=[REASON], signature=V3
                ),
                "4": VersionEntry(version="4", state=VersionState.PENDING, signature=V1),
                # Live, but not bound to an artifact: nothing says what would be loaded.
                "5": VersionEntry(
                    version="5", state=VersionState.LIVE, signature=V1, source="models:/m-echo5"
                ),
                "6": VersionEntry(version="6", state=VersionState.LIVE, signature=V1),
            },
        )
    },
)


class EchoModel:
    """A pyfunc stand-in: echoes the prompt, tagged with the version that ran."""

    def __init__(self, target: Target, calls: list[tuple[Target, Any, dict[str, Any] | None]]):
        self.target = target
        self.calls = calls

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        self.calls.append((self.target, data, params))
        if "boom" in list(data["prompt"]):
            raise ValueError("boom")  # the model's own failure, for the tests of 500s
        ran = f"{self.target.model.name}/{self.target.version.version}"
        suffix = (params or {}).get("suffix", "")
        return pd.DataFrame({"out": [f"{ran}:{p}{suffix}" for p in data["prompt"]]})


class EchoBackend(ModelHost):
    """The real model host (frames, batching), its models echoes made in-process."""

    def __init__(self) -> None:
        self.calls: list[tuple[Target, Any, dict[str, Any] | None]] = []
        # Each time the host asked for a model, as Ray's multiplexer counts its "get model".
        self.lookups: list[str] = []

        async def get_model(target: Target) -> LoadedModel:
            self.lookups.append(target.model_id)
            return LoadedModel(EchoModel(target, self.calls), Path("/nonexistent/sigserve-test"))

        super().__init__(get_model)


class Controller:
    def __init__(self) -> None:
        self.table: RoutingTable | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.table is not None and self.table.revision > int(request.url.params["after"]):
            return httpx.Response(200, content=self.table.model_dump_json())
        await asyncio.sleep(0.01)
        return httpx.Response(204)


def start(table: RoutingTable | None, **limits: int) -> tuple[TestClient, EchoBackend, Controller]:
    controller = Controller()
    controller.table = table
    source = TableSource("http://controller", transport=httpx.MockTransport(controller))
    backend = EchoBackend()
    app = create_app(source, backend, startup_wait_s=2 if table else 0, **limits)
    return TestClient(app, raise_server_exceptions=False), backend, controller


@pytest.fixture
def served() -> Iterator[tuple[TestClient, EchoBackend]]:
    client, backend, _ = start(TABLE)
    with client:
        yield client, backend


def test_no_table_yet_is_a_503_until_one_arrives() -> None:
    client, _, controller = start(None)
    with client:
        response = client.get("/models")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert client.post("/models/echo/serve", json={"prompt": "x"}).status_code == 503
        controller.table = TABLE
        # The long-poll brings it within milliseconds; the deadline only bounds a failure.
        deadline = time.monotonic() + 5
        while (listing := client.get("/models")).status_code != 200:
            assert time.monotonic() < deadline, f"no table within 5 s: {listing.text}"
            time.sleep(0.01)
        assert listing.json()["revision"] == 4


def test_lists_models_and_describes_the_contract(served: tuple[TestClient, EchoBackend]) -> None:
    client, _ = served
    listing = client.get("/models").json()
    assert listing["models"][0]["versions"][2] == {
        "version": "3",
        "state": "quarantined",
        "reasons": [REASON],
        "warnings": [],
    }
    echo = client.get("/models/echo").json()
    assert echo["default_version"] == "1"
    assert echo["contract"]["inputs"] == [{"type": "string", "name": "prompt", "required": True}]
    assert echo["contract"]["record_schema"]["required"] == ["prompt"]
    assert client.get("/models/nope").status_code == 404


@pytest.mark.parametrize(
    ("path", "headers", "ran"),
    [
        ("/models/echo/serve", {}, "echo/1"),
        ("/models/echo/serve", {"serve_multiplexed_model_id": "2"}, "echo/2"),
        ("/models/echo/serve", {"serve-multiplexed-model-id": "echo/2"}, "echo/2"),
        ("/models/echo/versions/2/serve", {"serve_multiplexed_model_id": "1"}, "echo/2"),
    ],
)
def test_version_comes_from_path_then_header_then_default(
    served: tuple[TestClient, EchoBackend], path: str, headers: dict[str, str], ran: str
) -> None:
    client, backend = served
    response = client.post(path, json=[{"prompt": "a"}, {"prompt": "b"}], headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == [{"out": f"{ran}:a"}, {"out": f"{ran}:b"}]
    (target,) = [c[0] for c in backend.calls]
    assert target.model_id.startswith(ran + "@")
    assert target.artifact == Artifact(**checked(target.version.version))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/models/echo/serve", {"prompt": "a"}),
        ("/models/echo/versions/2/serve", [{"prompt": "a"}, {"prompt": "b"}]),
        ("/models/echo/invocations", {"dataframe_records": [{"prompt": "a"}]}),
    ],
)
def test_a_request_asks_for_its_model_once(
    served: tuple[TestClient, EchoBackend], path: str, body: Any
) -> None:
    """One lookup in the replica's model cache per request, re-check after the load included."""
    client, backend = served
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    (ran,) = {c[0].model_id for c in backend.calls}
    assert backend.lookups == [ran]


def test_params_travel_in_the_envelope(served: tuple[TestClient, EchoBackend]) -> None:
    client, backend = served
    body = {"inputs": {"prompt": "a"}, "params": {"suffix": "?!"}}
    assert client.post("/models/echo/serve", json=body).json() == [{"out": "echo/1:a?!"}]
    assert backend.calls[0][2] == {"suffix": "?!"}


def test_quarantined_is_409_with_reasons_and_never_reaches_a_model(
    served: tuple[TestClient, EchoBackend],
) -> None:
    client, backend = served
    for response in (
        client.post("/models/echo/versions/3/serve", json={"text_to_translate": "a"}),
        client.post(
            "/models/echo/serve", json={"prompt": "a"}, headers={"serve_multiplexed_model_id": "3"}
        ),
        client.post(
            "/models/echo/invocations",
            json={"inputs": ["a"]},
            headers={"serve_multiplexed_model_id": "3"},
        ),
    ):
        assert response.status_code == 409
        assert response.json()["reasons"] == [REASON]
    assert backend.calls == []


def test_a_problem_names_the_version_it_was_answered_for_once_one_was_chosen(
    served: tuple[TestClient, EchoBackend],
) -> None:
    client, _ = served
    failed = client.post("/models/echo/serve", json={"prompt": "boom"})
    assert failed.status_code == 500 and failed.json()["type"].endswith("model-failed")
    assert failed.headers["sigserve-model-version"] == "1"  # the default ran, and failed
    invalid = client.post("/models/echo/versions/2/serve", json={"nothing": "here"})
    assert invalid.status_code == 422
    assert invalid.headers["sigserve-model-version"] == "2"
    # No version chosen (quarantined, unknown): nothing ran, nothing is named.
    refused = client.post("/models/echo/versions/3/serve", json={"prompt": "a"})
    assert refused.status_code == 409 and "sigserve-model-version" not in refused.headers
    ok = client.post("/models/echo/serve", json={"prompt": "a"})
    assert ok.status_code == 200 and ok.headers["sigserve-model-version"] == "1"


def test_unknown_pending_and_invalid(served: tuple[TestClient, EchoBackend]) -> None:
    client, backend = served
    assert client.post("/models/nope/serve", json={"prompt": "a"}).status_code == 404
    assert client.post("/models/echo/versions/9/serve", json={"prompt": "a"}).status_code == 404
    pending = client.post("/models/echo/versions/4/serve", json={"prompt": "a"})
    assert (pending.status_code, pending.headers["retry-after"]) == (503, "1")
    other = client.post(
        "/models/echo/serve", json={"prompt": "a"}, headers={"serve_multiplexed_model_id": "x/1"}
    )
    assert other.status_code == 400
    invalid = client.post("/models/echo/serve", json={"prompt": 1, "n": 2})
    assert invalid.status_code == 422
    assert {e["field"] for e in invalid.json()["errors"]} == {"prompt", "n"}
    assert client.post("/models/echo/serve", content=b"{not json").status_code == 422
    assert backend.calls == []


def test_a_live_version_not_bound_to_an_artifact_is_503_and_never_reaches_a_model(
    served: tuple[TestClient, EchoBackend],
) -> None:
    client, backend = served
    for response in (
        client.post("/models/echo/versions/5/serve", json={"prompt": "a"}),
        client.post("/models/echo/versions/6/serve", json={"prompt": "a"}),
        client.post(
            "/models/echo/serve", json={"prompt": "a"}, headers={"serve_multiplexed_model_id": "6"}
        ),
        client.post(
            "/models/echo/invocations",
            json={"inputs": [{"prompt": "a"}]},
            headers={"serve_multiplexed_model_id": "5"},
        ),
    ):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        assert response.json()["type"] == "urn:sigserve:problem:version-unbound"
    assert backend.calls == []


def test_the_model_id_changes_with_the_artifact() -> None:
    def version_1(source: str, digest: str) -> str:
        entry = VersionEntry(
            version="1", state=VersionState.LIVE, source=source, mlmodel_digest=digest
        )
        model = ModelEntry(name="team/echo@eu", default_version="1", versions={"1": entry})
        return resolve(
            RoutingTable(revision=1, models={model.name: model}), model.name, None
        ).model_id

    first = version_1("models:/m-a", "a" * 64)
    # Registered again under the same name: same version number, another artifact.
    assert version_1("models:/m-b", "b" * 64) != first
    assert version_1("models:/m-a", "c" * 64) != first
    assert version_1("models:/m-b", "a" * 64) != first
    assert version_1("models:/m-a", "a" * 64) == first
    assert first.startswith("team/echo@eu/1@")
    parsed = parse_model_id(first)
    assert (parsed.name, parsed.version) == ("team/echo@eu", "1")


def test_the_version_reads_its_own_types(served: tuple[TestClient, EchoBackend]) -> None:
    client, backend = served
    # v2 has an optional integer the contract (v1) does not have: clients of v1 cannot send it.
    response = client.post("/models/echo/versions/2/serve", json={"prompt": "a", "n": 1})
    assert response.status_code == 422
    client.post("/models/echo/versions/2/serve", json={"prompt": "a"})
    assert list(backend.calls[0][1].columns) == ["prompt"]


def test_invocations_speak_the_mlflow_scoring_protocol(
    served: tuple[TestClient, EchoBackend],
) -> None:
    client, _ = served
    split = {"dataframe_split": {"columns": ["prompt"], "data": [["a"], ["b"]]}}
    assert client.post("/models/echo/invocations", json=split).json() == {
        "predictions": [{"out": "echo/1:a"}, {"out": "echo/1:b"}]
    }
    records = {"dataframe_records": [{"prompt": "a"}], "params": {"suffix": "."}}
    response = client.post(
        "/models/echo/invocations", json=records, headers={"serve_multiplexed_model_id": "2"}
    )
    assert response.json() == {"predictions": [{"out": "echo/2:a."}]}
    assert client.post("/models/echo/invocations", json={"rows": []}).status_code == 422


def test_openapi_shows_each_models_own_path(served: tuple[TestClient, EchoBackend]) -> None:
    client, _ = served
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/models/echo/serve"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/echo_Record"} in request["anyOf"]
    assert document["components"]["schemas"]["echo_Record"]["required"] == ["prompt"]
    assert "409" in operation["responses"]
    assert client.get("/docs").status_code == 200


def test_oversized_bodies_and_too_many_records_are_refused_before_any_model() -> None:
    client, backend, _ = start(TABLE, max_body_bytes=1024 * 1024, max_records=100)
    with client:
        huge = b'{"prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}'
        response = client.post("/models/echo/serve", content=huge)
        assert response.status_code == 413
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"][0]["field"] == "body"
        # Sent in chunks, with no Content-Length: refused as it streams in.
        chunks = (b"x" * 65536 for _ in range(64))
        streamed = client.post("/models/echo/serve", content=chunks)
        assert streamed.status_code == 413 and "at most 1048576" in streamed.json()["detail"]

        many = [{"prompt": "a"}] * 101
        for path, body, field in (
            ("/models/echo/serve", many, "body"),
            ("/models/echo/serve", {"inputs": many}, "inputs"),
            ("/models/echo/invocations", {"dataframe_records": many}, "dataframe_records"),
            (
                "/models/echo/invocations",
                {"dataframe_split": {"columns": ["prompt"], "data": [["a"]] * 101}},
                "dataframe_split.data",
            ),
        ):
            refused = client.post(path, json=body)
            assert refused.status_code == 422, (path, refused.text)
            assert refused.json()["errors"] == [
                {"field": field, "reason": "holds 101 records; a request may hold at most 100"}
            ]
        assert client.post("/models/echo/serve", json=many[:100]).status_code == 200
    assert len(backend.calls) == 1


class HeldLoad(EchoBackend):
    """Echo models whose load of version ``held`` waits until released (a slow download)."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.loading = asyncio.Event()
        self.release = asyncio.Event()
        echo = self._get_model

        async def get_model(target: Target) -> LoadedModel:
            if target.version.version == held:
                self.loading.set()
                await self.release.wait()
            return await echo(target)

        self._get_model = get_model


def without(version: str) -> RoutingTable:
    """``TABLE``'s next revision, ``version`` deleted from the registry."""
    echo = TABLE.models["echo"]
    versions = {v: e for v, e in echo.versions.items() if v != version}
    return RoutingTable(revision=5, models={"echo": echo.model_copy(update={"versions": versions})})


def quarantining(version: str) -> RoutingTable:
    """``TABLE``'s next revision, ``version`` quarantined by hand."""
    echo = TABLE.models["echo"]
    entry = echo.versions[version].model_copy(
        update={"state": VersionState.QUARANTINED, "reasons": ["quarantined by hand: leaks"]}
    )
    versions = {**echo.versions, version: entry}
    return RoutingTable(revision=5, models={"echo": echo.model_copy(update={"versions": versions})})


@pytest.mark.parametrize(
    ("path", "body", "held"),
    [
        ("/models/echo/versions/2/serve", {"prompt": "a"}, "2"),
        ("/models/echo/serve", {"prompt": "a"}, "1"),  # the default when the request came
        ("/models/echo/invocations", {"dataframe_records": [{"prompt": "a"}]}, "1"),
    ],
)
@pytest.mark.parametrize(
    ("change", "status", "slug"),
    [(quarantining, 409, "version-quarantined"), (without, 404, "unknown-version")],
)
def test_a_version_quarantined_or_removed_while_its_model_loads_is_never_predicted(
    path: str, body: Any, held: str, change: Any, status: int, slug: str
) -> None:
    async def scenario() -> httpx.Response:
        source = TableSource("http://controller", transport=httpx.MockTransport(Controller()))
        source.offer(TABLE)
        backend = HeldLoad(held)
        app = create_app(source, backend)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving") as client:
            request = asyncio.create_task(client.post(path, json=body))
            await asyncio.wait_for(backend.loading.wait(), 5)
            assert source.offer(change(held))
            backend.release.set()
            response = await asyncio.wait_for(request, 5)
        assert backend.calls == []
        return response

    response = asyncio.run(scenario())
    assert response.status_code == status, response.text
    assert response.json()["type"] == f"urn:sigserve:problem:{slug}"
    if status == 409:
        assert response.json()["reasons"] == ["quarantined by hand: leaks"]


async def until(
    ask: Callable[[], Awaitable[httpx.Response]],
    done: Callable[[httpx.Response], bool],
    timeout: float = 2.0,
) -> None:
    """Ask until the answer is ``done``; fail past ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not done(answer := await ask()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {answer.text[:300]}")
        await asyncio.sleep(0.01)


def pinned_to_2(revision: int, *, decided: dict[str, VersionEntry] | None = None) -> RoutingTable:
    """``TABLE`` with version 2 pinned as the default (and the versions ``decided`` replaced)."""
    echo = TABLE.models["echo"]
    update = {"default_version": "2", "versions": {**echo.versions, **(decided or {})}}
    return RoutingTable(revision=revision, models={"echo": echo.model_copy(update=update)})


def test_while_a_new_default_loads_the_old_one_answers_and_decisions_apply_at_once() -> None:
    async def scenario() -> None:
        controller = Controller()
        controller.table = TABLE
        backend = HeldLoad("2")
        source = TableSource(
            "http://controller", transport=httpx.MockTransport(controller), prepare=backend.warm
        )
        app = create_app(source, backend)
        await source.start(wait_s=2)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving") as client:
            controller.table = pinned_to_2(5)
            await asyncio.wait_for(backend.loading.wait(), 5)  # the replica warms version 2
            four = (
                TABLE.models["echo"]
                .versions["4"]
                .model_copy(
                    update={"state": VersionState.QUARANTINED, "reasons": ["breaks the contract"]}
                )
            )
            controller.table = pinned_to_2(6, decided={"4": four})
            # The long-poll brings revision 6 within milliseconds.
            await until(lambda: client.get("/models"), lambda r: r.json()["revision"] == 6)
            pending_then_refused = await client.post("/models/echo/versions/4/serve", json={})
            assert pending_then_refused.status_code == 409, pending_then_refused.text
            assert pending_then_refused.json()["reasons"] == ["breaks the contract"]
            old_default = await client.post("/models/echo/serve", json={"prompt": "a"})
            assert old_default.json() == [{"out": "echo/1:a"}]
            backend.release.set()
            await until(
                lambda: client.get("/models/echo"), lambda r: r.json()["default_version"] == "2"
            )
            new_default = await client.post("/models/echo/serve", json={"prompt": "a"})
            assert new_default.json() == [{"out": "echo/2:a"}]
        await source.stop()

    asyncio.run(scenario())

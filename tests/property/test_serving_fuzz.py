"""Hostile input to every serving route: never a 500, never a stack trace, every error a
problem+json. The app runs in-process with real MLflow pyfunc models (so MLflow's own schema
enforcement sees whatever gets past the contract) and a routing table of awkward model names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import mlflow
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import event, given
from hypothesis import strategies as st
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.types.schema import Array, Object, Property

from serving.api import create_app
from serving.loader import LoadedModel, PyfuncLoader
from serving.model_host import ModelHost
from serving.resolve import Target
from serving.table_source import TableSource
from wire.routing_table import ModelEntry, RoutingTable, VersionEntry, VersionState

MAX_RECORDS = 50
MAX_BODY = 64 * 1024


class Rows(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """One output row per input row, whatever the input: the fuzz is about the app, not it."""

    def predict(self, context: Any, model_input: Any, params: Any = None) -> pd.DataFrame:
        n = len(model_input) if hasattr(model_input, "__len__") else 1
        return pd.DataFrame({"out": ["ok"] * max(n, 1)})


SIGNATURES: dict[str, ModelSignature | None] = {
    "columns": ModelSignature(
        Schema(
            [
                ColSpec("string", "prompt"),
                ColSpec("long", "n", required=False),
                ColSpec("double", "x", required=False),
                ColSpec("boolean", "flag", required=False),
                ColSpec("datetime", "at", required=False),
                ColSpec("binary", "blob", required=False),
                ColSpec(Array("string"), "tags", required=False),
                ColSpec(Object([Property("k", "integer")]), "obj", required=False),
            ]
        ),
        Schema([ColSpec("string", "out")]),
        ParamSchema([ParamSpec("temperature", "double", 0.5), ParamSpec("k", "long", 3)]),
    ),
    "unnamed": ModelSignature(Schema([ColSpec("string")]), Schema([ColSpec("string", "out")])),
    "tensor": ModelSignature(
        Schema([TensorSpec(__import__("numpy").dtype("float32"), (-1, 3))]),
        Schema([ColSpec("string", "out")]),
    ),
    "free": None,
}

# Names MLflow allows (no "/" or ":") that a URL path must still carry: dots, unicode, spaces,
# percent signs. Names with "/" , "%2F" or ".." are asked for below: they must be plain 404s.
NAMES = {
    "columns": "team.sentiment-v2",
    "unnamed": "a..b",
    "tensor": "modèle ünïcode 模型",
    "free": "100% a b",
}
HOSTILE_NAMES = ["team/sentiment", "%2F", "..", "../..", "team%2Fsentiment", "a\\b", "\u0000"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("models")
    models: dict[str, ModelEntry] = {}
    for kind, signature in SIGNATURES.items():
        path = root / kind
        mlflow.pyfunc.save_model(
            str(path), python_model=Rows(), signature=signature, pip_requirements=[]
        )
        digest = hashlib.sha256((path / "MLmodel").read_bytes()).hexdigest()
        sig = signature.to_dict() if signature is not None else None
        name = NAMES[kind]
        models[name] = ModelEntry(
            name=name,
            default_version="1",
            contract=sig,
            versions={
                "1": VersionEntry(
                    version="1",
                    state=VersionState.LIVE,
                    signature=sig,
                    source=path.as_uri(),
                    mlmodel_digest=digest,
                ),
                "2": VersionEntry(version="2", state=VersionState.QUARANTINED, reasons=["no"]),
                "3": VersionEntry(version="3", state=VersionState.PENDING),
            },
        )
    table = RoutingTable(revision=1, models=models)
    loader, cache = PyfuncLoader(), {}

    async def get_model(target: Target) -> LoadedModel:
        if target.model_id not in cache:
            cache[target.model_id] = await loader.load(target.model_id, target.artifact)
        return cache[target.model_id]

    source = TableSource("http://controller", transport=httpx.MockTransport(_no_news))
    source.offer(table)
    app = create_app(source, ModelHost(get_model), max_body_bytes=MAX_BODY, max_records=MAX_RECORDS)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _no_news(request: httpx.Request) -> httpx.Response:
    return httpx.Response(204)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "prompt",
        "n",
        "x",
        "flag",
        "at",
        "blob",
        "tags",
        "obj",
        "inputs",
        "params",
        "temperature",
        "k",
        "dataframe_split",
        "dataframe_records",
        "instances",
        "columns",
        "data",
        "",
    ]
)
records = st.dictionaries(field_names, json_values, max_size=6)
near_contract = st.one_of(
    records,
    st.lists(records, max_size=MAX_RECORDS + 5),
    st.fixed_dictionaries(
        {"inputs": st.one_of(records, st.lists(records, max_size=5))},
        optional={"params": st.dictionaries(field_names, json_values)},
    ),
    st.fixed_dictionaries({"dataframe_records": st.lists(records, max_size=5)}),
    st.fixed_dictionaries(
        {
            "dataframe_split": st.fixed_dictionaries(
                {
                    "columns": st.lists(field_names, max_size=3),
                    "data": st.lists(json_values, max_size=4),
                }
            )
        }
    ),
    st.fixed_dictionaries({"instances": st.lists(json_values, max_size=4)}),
    st.fixed_dictionaries(
        {"inputs": st.lists(st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3), max_size=4)}
    ),
)
raw_bodies = st.one_of(
    near_contract.map(lambda b: json.dumps(b).encode()),
    json_values.map(lambda b: json.dumps(b).encode()),
    st.binary(max_size=64),
    st.just(b"[" * 5000),  # deep nesting
    st.just(b'{"prompt": "' + b"x" * (MAX_BODY + 1) + b'"}'),
)
# Mostly the served names, so most bodies reach a contract and a model.
served = st.sampled_from(sorted(NAMES.values()))
names = st.one_of(
    served, served, served, st.sampled_from(HOSTILE_NAMES), st.text(min_size=1, max_size=12)
)
versions = st.one_of(
    st.just("1"), st.sampled_from(["1", "2", "3", "9"]), st.text(min_size=1, max_size=6)
)
routes = st.sampled_from(
    [
        "POST {m}/serve",
        "POST {m}/versions/{v}/serve",
        "POST {m}/invocations",
        "GET {m}",
        "GET /models",
        "GET /openapi.json",
    ]
)
headers = st.one_of(
    st.just({}),
    st.builds(lambda v: {"serve_multiplexed_model_id": v}, versions),
    st.builds(lambda v: {"serve-multiplexed-model-id": v}, st.text(max_size=10)),
)


def _header_safe(values: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if v.isascii() and v.isprintable()}


@given(route=routes, name=names, version=versions, body=raw_bodies, extra=headers)
def test_no_route_answers_500_or_a_stack_trace(
    client: TestClient, route: str, name: str, version: str, body: bytes, extra: dict[str, str]
) -> None:
    method, template = route.split(" ")
    path = template.format(m="/models/" + quote(name, safe=""), v=quote(version, safe=""))
    response = client.request(
        method, path, content=body if method == "POST" else None, headers=_header_safe(extra)
    )
    event(f"{method} {template}: {response.status_code}")
    assert response.status_code < 500 or response.status_code == 503, (
        path,
        body[:200],
        response.text[:500],
    )
    assert "Traceback" not in response.text
    named = "{m}" in template
    if named and any(h in name for h in ("/", "..")) and name not in NAMES.values():
        assert response.status_code in (404, 405, 413, 422), (path, response.status_code)
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json"), (
            path,
            response.text[:300],
        )
        problem = response.json()
        assert problem["status"] == response.status_code and problem["title"]
    if response.status_code == 200 and path.endswith("/serve"):
        assert isinstance(response.json(), list)


def test_the_awkward_names_are_served(client: TestClient) -> None:
    # The fuzz above must reach real models, not only 404s: each name answers by its quoted path.
    bodies = {
        "columns": {"prompt": "hi"},
        "unnamed": ["hi"],
        "tensor": {"inputs": [[1.0, 2.0, 3.0]]},
        "free": {"anything": 1},
    }
    for kind, name in NAMES.items():
        response = client.post(f"/models/{quote(name, safe='')}/serve", json=bodies[kind])
        assert response.status_code == 200, (name, response.text)
        assert response.json() == [{"out": "ok"}]

"""The resync's listing and the passes' reads of many models read MLflow's JSON themselves
(``controller.registry_rest``): the same fingerprints, models and versions as MLflow's client
made of the same answers, without its protobuf parse (docs/benchmarks.md, "The controller at
rest"), and their errors told apart as before.

The registry is the real ``Registry`` (MLflow's client over HTTP); MLflow's REST API is a small
HTTP server answering the listing's pages as MLflow does (the seam).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from mlflow.utils import rest_utils

from controller.exceptions import RegistryRefused, RegistryUnavailable
from controller.registry import Registry
from controller.registry_reads import search_models, search_versions
from controller.registry_rest import RestGet

_VERSION = {"name": "a", "version": "3", "creation_timestamp": 5, "last_updated_timestamp": 9,
            "current_stage": "None", "status": "READY", "source": "models:/m-1",
            "tags": [{"key": "sigserve.state", "value": "live"}, {"key": "empty"}]}  # fmt: skip
PAGES: dict[str, dict[str, Any]] = {
    "": {
        "registered_models": [
            {"name": "a", "creation_timestamp": 1, "last_updated_timestamp": 9,
             "tags": [{"key": "sigserve.policy", "value": "none"}, {"key": "t", "value": ""}],
             "aliases": [{"alias": "serving", "version": "3"}, {"alias": "old", "version": "1"}],
             "latest_versions": [
                 _VERSION,
                 {**_VERSION, "version": "2", "current_stage": "Staging", "tags": []},
             ]},
            # What MLflow leaves out of its JSON: defaults (no status, no stage, no times).
            {"name": "it's \\ b", "latest_versions": [{"name": "it's \\ b", "version": "1"}]},
            # A prompt: MLflow's client leaves it out of its searches, so must the controller.
            {"name": "p", "tags": [{"key": "mlflow.prompt.is_prompt", "value": "true"}]},
        ],
        "next_page_token": "p2",
    },
    "p2": {"registered_models": [{"name": "c", "creation_timestamp": 2}]},
}
VERSIONS = [
    _VERSION,
    {"name": "a", "version": "1", "source": "s3://b/1", "creation_timestamp": 4,
     "tags": [{"key": "k", "value": "1"}, {"key": "k", "value": "2"}]},
    # No source, status or times: what MLflow leaves out.
    {"name": "c", "version": "7"},
]


class _MLflow(BaseHTTPRequestHandler):
    """The listing's endpoint, paged by token; ``answer`` overrides it with an error."""

    seen: list[dict[str, list[str]]] = []
    error: tuple[int, dict[str, str]] | None = None

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        type(self).seen.append(query)
        token = query.get("page_token", [""])[0]
        only = query.get("filter", [""])[0]
        # A read of many: the models of every page the filter names, then their versions in
        # two pages. Prompts are left out when the filter says so, as MLflow does.
        named = [m for page in PAGES.values() for m in page["registered_models"]
                 if repr(m["name"])[1:-1] in only.split(" AND ")[0]]  # fmt: skip
        if type(self).error is not None:
            status, answer = type(self).error  # type: ignore[misc]
        elif url.path == "/api/2.0/mlflow/registered-models/search":
            models = named if only.startswith("name") else PAGES[token]["registered_models"]
            if "`mlflow.prompt.is_prompt` != 'true'" in only:
                models = [m for m in models if m["name"] != "p"]
            page = {k: v for k, v in PAGES[token].items() if k != "registered_models"}
            status, answer = 200, {"registered_models": models,
                                   **(page if not only.startswith("name") else {})}
        elif url.path == "/api/2.0/mlflow/model-versions/search":
            found = [v for v in VERSIONS if any(v["name"] == m["name"] for m in named)]
            page = found[:2] if not token else found[2:]
            status, answer = 200, {"model_versions": page, **({} if token else {
                "next_page_token": "v2"})}  # fmt: skip
        else:
            status, answer = 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": url.path}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def mlflow_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # Registry() setdefaults these; setting them here means they are undone afterwards.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    _MLflow.seen, _MLflow.error = [], None
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MLflow)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _through_the_client(registry: Registry) -> None:
    """The listing as it was made before: MLflow's client, its entities fingerprinted."""
    registry.__dict__["_rest"] = None


def test_the_listing_reads_what_the_client_read_without_its_parse(
    mlflow_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed = []
    parse_dict = rest_utils.parse_dict
    monkeypatch.setattr(rest_utils, "parse_dict",
                        lambda **kw: parsed.append(1) or parse_dict(**kw))  # fmt: skip
    listed = Registry(mlflow_url).listing()
    assert parsed == []  # no page went through protobuf
    assert [q.get("page_token") for q in _MLflow.seen] == [None, ["p2"]]
    assert _MLflow.seen[0]["max_results"] == ["1000"]
    before = Registry(mlflow_url)
    _through_the_client(before)
    assert listed == before.listing() and len(parsed) == 2
    assert list(listed) == ["a", "it's \\ b", "c"]
    a = listed["a"]
    assert a.aliases == (("old", "1"), ("serving", "3"))
    assert [(v.version, v.stage, v.status) for v in a.latest] == [
        ("3", "None", "READY"), ("2", "Staging", "READY")]  # fmt: skip
    assert listed["it's \\ b"].latest[0].status == "PENDING_REGISTRATION"


def test_reads_of_many_models_read_what_the_client_read(
    mlflow_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(mlflow_url)
    rest = RestGet.of(registry._client)
    assert rest is not None
    names = ["a", "c", "absent", "p"]
    parsed = []
    parse_dict = rest_utils.parse_dict
    monkeypatch.setattr(rest_utils, "parse_dict",
                        lambda **kw: parsed.append(1) or parse_dict(**kw))  # fmt: skip
    noted: dict[str, list[tuple[str, str, str | None]]] = {"rest": [], "client": []}
    models = search_models(registry._client, names, rest)
    versions = search_versions(registry._client, names, lambda *a: noted["rest"].append(a), rest)
    assert parsed == []  # neither went through protobuf
    assert models == search_models(registry._client, names)
    assert versions == search_versions(registry._client, names,
                                       lambda *a: noted["client"].append(a))  # fmt: skip
    assert parsed  # the client's did
    assert noted["rest"] == noted["client"]
    assert set(models) == {"a", "c"} and models["a"].aliases == {"serving": "3", "old": "1"}
    assert [v.version for v in versions["a"]] == ["3", "1"] and versions["absent"] == []
    assert versions["a"][1].tags == {"k": "2"} and versions["a"][1].created_at == 4
    assert (versions["c"][0].status, versions["c"][0].source) == ("PENDING_REGISTRATION", "")


@pytest.mark.parametrize(
    ("status", "answer", "raised"),
    [
        (403, {"error_code": "PERMISSION_DENIED", "message": "no"}, RegistryRefused),
        (500, {"error_code": "INTERNAL_ERROR", "message": "down"}, RegistryUnavailable),
    ],
)
def test_the_listing_errors_are_told_apart_as_before(
    mlflow_url: str, status: int, answer: dict[str, str], raised: type[Exception]
) -> None:
    _MLflow.error = (status, answer)
    before = Registry(mlflow_url)
    _through_the_client(before)
    for registry in (Registry(mlflow_url), before):
        with pytest.raises(raised):
            registry.listing()

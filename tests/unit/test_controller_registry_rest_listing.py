"""The resync's listing reads MLflow's JSON itself (``controller.registry_listing.RestListing``):
the same fingerprints as MLflow's client made of the same pages, without its protobuf parse
(~10x the CPU: docs/benchmarks.md, "The controller at rest"), and its errors told apart as
before.

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
        ],
        "next_page_token": "p2",
    },
    "p2": {"registered_models": [{"name": "c", "creation_timestamp": 2}]},
}


class _MLflow(BaseHTTPRequestHandler):
    """The listing's endpoint, paged by token; ``answer`` overrides it with an error."""

    seen: list[dict[str, list[str]]] = []
    error: tuple[int, dict[str, str]] | None = None

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        type(self).seen.append(query)
        if url.path != "/api/2.0/mlflow/registered-models/search":
            status, answer = 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": url.path}
        elif type(self).error is not None:
            status, answer = type(self).error  # type: ignore[misc]
        else:
            status, answer = 200, PAGES[query.get("page_token", [""])[0]]
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
    registry.__dict__["_rest_listing"] = None


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

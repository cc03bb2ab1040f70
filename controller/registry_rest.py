"""MLflow's REST API read as JSON, without its client's protobuf parse.

MLflow's client turns each answer into protobuf messages and then entities (and checks the body
is JSON by parsing it once more first). For the resync's listing and the passes' reads of many
models that was most of their CPU in the controller: at 10,000 models ~1 s per resync (every
30 s), and ~a third of a full pass's (docs/benchmarks.md, "The controller at rest"). The
request is MLflow's own (``http_request``, with the registry store's credentials, headers and
retries); an answer other than 200 and a JSON object is handed to MLflow's
``verify_rest_response``, so errors are MLflow's, told apart as every registry call's are
(``Registry._call``). The fields MLflow leaves out of its JSON are read as the proto2 defaults
its client would have read (an empty string, 0, an enum's first value), and a search of
registered models leaves prompts out as the client's does (``models_filter``).
"""

from __future__ import annotations

import json
from typing import Any

# A version's status when the JSON has none: ModelVersionStatus's first value, as the client.
NO_STATUS = "PENDING_REGISTRATION"


class RestGet:
    """GETs to one MLflow registry server, answered as the JSON object MLflow sent."""

    def __init__(self, registry_client: Any) -> None:
        self._client = registry_client
        self._store = registry_client.store

    @classmethod
    def of(cls, client: Any) -> RestGet | None:
        """For a ``MlflowClient`` whose registry is a REST server; None for any other (a
        database URI: its store makes entities without a parse)."""
        from mlflow.store.model_registry.rest_store import RestStore

        registry_client = client._get_registry_client()
        return cls(registry_client) if isinstance(registry_client.store, RestStore) else None

    def models_filter(self, filter_string: str | None) -> str | None:
        """``filter_string`` as the client's ``search_registered_models`` sends it: prompts
        (registered models tagged ``mlflow.prompt.is_prompt``) left out where the registry
        has them (MLflow 3's ``ModelRegistryClient``)."""
        from mlflow.prompt.registry_utils import (
            add_prompt_filter_string,
            is_prompt_supported_registry,
        )

        uri = self._client.registry_uri or ""
        if is_prompt_supported_registry(uri) and not uri.startswith("databricks-uc"):
            return add_prompt_filter_string(filter_string, False)
        return filter_string

    def get(self, api: type, params: dict[str, Any]) -> dict[str, Any]:
        """The answer of ``api`` (a request message of ``mlflow.protos.model_registry_pb2``,
        naming the endpoint) to ``params``. Raises as the client does: ``MlflowException``, or
        ``requests``' errors (``OSError``)."""
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint, method = self._store._get_endpoint_from_method(api)
        response = http_request(  # type: ignore[no-untyped-call]
            self._store.get_host_creds(), endpoint, method, params=params
        )
        answer = _object(response.text) if response.status_code == 200 else None
        if answer is None:
            # Not a 200 with a JSON object: MLflow's verdict (it raises, or reads "" as {}).
            answer = _object(verify_rest_response(response, endpoint).text)
        return answer or {}


def _object(text: str) -> dict[str, Any] | None:
    try:
        answer = json.loads(text)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def pairs(entries: Any, key: str, value: str) -> dict[str, str]:
    """A JSON list of ``{key: .., value: ..}`` (tags) or ``{alias: .., version: ..}`` as the
    client's entity holds it: a dict, the last of a key kept."""
    return {str(e.get(key, "")): str(e.get(value, "")) for e in entries or ()}

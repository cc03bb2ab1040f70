"""What one page of the registry's model listing shows of each model: its fingerprint.

``search_registered_models`` returns, for each registered model, its creation and last update
times, its tags, its aliases and its latest version per stage (with that version's status and
tags). The resync (``controller/resync.py``) keeps the fingerprint seen at each model's last
committed pass and reconciles only models whose fingerprint moved. Which registry changes
move it, and which do not (they wait for the full pass): docs/architecture.md, "What the
resync sees".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Pairs = tuple[tuple[str, str], ...]


def _pairs(values: Mapping[Any, Any] | None) -> Pairs:
    # MLflow's entities hold an alias's version as an int in process and a str over REST.
    return tuple(sorted((str(k), str(v)) for k, v in (values or {}).items()))


@dataclass(frozen=True, slots=True)
class LatestVersion:
    """A model's newest version in one stage, as the listing shows it."""

    version: str
    stage: str
    status: str
    updated_at: int
    tags: Pairs


@dataclass(frozen=True, slots=True)
class ModelFingerprint:
    """Everything the listing shows of one model that a change in the registry can move.

    ``created_at`` moves when the model is deleted and created again; ``updated_at`` with a
    version created or deleted (or a description, a rename, a stage); ``tags`` and ``aliases``
    with the model's own, which do not move ``updated_at``; ``latest`` with the newest
    version's status and tags.
    """

    created_at: int
    updated_at: int
    tags: Pairs
    aliases: Pairs
    latest: tuple[LatestVersion, ...]


def fingerprint(model: Any) -> ModelFingerprint:
    """The fingerprint of one ``mlflow.entities.model_registry.RegisteredModel``."""
    return ModelFingerprint(
        created_at=int(model.creation_timestamp or 0),
        updated_at=int(model.last_updated_timestamp or 0),
        tags=_pairs(model.tags),
        aliases=_pairs(model.aliases),
        latest=_latest(model.latest_versions or ()),
    )


def _latest(versions: Iterable[Any]) -> tuple[LatestVersion, ...]:
    return tuple(
        sorted(
            (
                LatestVersion(
                    version=str(v.version),
                    stage=str(v.current_stage),
                    status=str(v.status),
                    updated_at=int(v.last_updated_timestamp or 0),
                    tags=_pairs(v.tags),
                )
                for v in versions
            ),
            key=lambda v: (v.stage, v.version),
        )
    )


# Read by the REST listing as MLflow's client reads it: the fields a proto2 message holds when
# the JSON leaves them out (an enum's first value, an empty string, 0).
_NO_STATUS = "PENDING_REGISTRATION"


def _json_pairs(entries: Iterable[Mapping[str, Any]] | None, key: str, value: str) -> Pairs:
    return _pairs({e.get(key, ""): e.get(value, "") for e in entries or ()})


def fingerprint_json(model: Mapping[str, Any]) -> ModelFingerprint:
    """The fingerprint of one registered model as MLflow's REST API answers it (JSON): the
    same as ``fingerprint`` of the entity MLflow's client would have made of it."""
    return ModelFingerprint(
        created_at=int(model.get("creation_timestamp") or 0),
        updated_at=int(model.get("last_updated_timestamp") or 0),
        tags=_json_pairs(model.get("tags"), "key", "value"),
        aliases=_json_pairs(model.get("aliases"), "alias", "version"),
        latest=tuple(
            sorted(
                (
                    LatestVersion(
                        version=str(v.get("version", "")),
                        stage=str(v.get("current_stage", "")),
                        status=str(v.get("status", _NO_STATUS)),
                        updated_at=int(v.get("last_updated_timestamp") or 0),
                        tags=_json_pairs(v.get("tags"), "key", "value"),
                    )
                    for v in model.get("latest_versions") or ()
                ),
                key=lambda v: (v.stage, v.version),
            )
        ),
    )


class RestListing:
    """The listing's pages read as MLflow's REST API answers them, each model's JSON made into
    its fingerprint directly. MLflow's client parses each page into protobuf messages and then
    entities first: at 10,000 models that was ~1 s of the controller's CPU per resync (every
    30 s, the most of what a controller at rest spends), ~10x what reading the JSON costs
    (docs/benchmarks.md, "The controller at rest"). Same request, credentials and headers:
    MLflow's own ``http_request`` with the registry store's host credentials."""

    def __init__(self, store: Any) -> None:
        from mlflow.protos.model_registry_pb2 import SearchRegisteredModels

        self._store = store
        self._endpoint, self._method = store._get_endpoint_from_method(SearchRegisteredModels)

    @classmethod
    def of(cls, client: Any) -> RestListing | None:
        """For a ``MlflowClient`` whose registry is a REST server; None for any other (a
        database URI: its store answers entities without a parse)."""
        from mlflow.store.model_registry.rest_store import RestStore

        store = client._get_registry_client().store
        return cls(store) if isinstance(store, RestStore) else None

    def page(self, max_results: int, token: str | None) -> tuple[dict[str, ModelFingerprint],
                                                                 str | None]:  # fmt: skip
        """One page: each model's fingerprint by name, and the next page's token (None: the
        last). Errors as the client's: ``MlflowException`` or ``requests``' ``OSError``."""
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        params: dict[str, Any] = {"max_results": max_results}
        if token:
            params["page_token"] = token
        response = verify_rest_response(
            http_request(  # type: ignore[no-untyped-call]
                self._store.get_host_creds(), self._endpoint, self._method, params=params
            ),
            self._endpoint,
        )  # fmt: skip
        answer = json.loads(response.text)
        found = {str(m["name"]): fingerprint_json(m) for m in answer.get("registered_models", ())}
        return found, answer.get("next_page_token") or None

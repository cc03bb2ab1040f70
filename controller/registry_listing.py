"""What one page of the registry's model listing shows of each model: its fingerprint.

``search_registered_models`` returns, for each registered model, its creation and last update
times, its tags, its aliases and its latest version per stage (with that version's status and
tags). The resync (``controller/resync.py``) keeps the fingerprint seen at each model's last
committed pass and reconciles only models whose fingerprint moved. Which registry changes
move it, and which do not (they wait for the full pass): docs/architecture.md, "What the
resync sees".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.registry_rest import NO_STATUS, RestGet, pairs

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



def fingerprint_json(model: Mapping[str, Any]) -> ModelFingerprint:
    """The fingerprint of one registered model as MLflow's REST API answers it (JSON): the
    same as ``fingerprint`` of the entity MLflow's client would have made of it
    (``controller.registry_rest``)."""
    return ModelFingerprint(
        created_at=int(model.get("creation_timestamp") or 0),
        updated_at=int(model.get("last_updated_timestamp") or 0),
        tags=_pairs(pairs(model.get("tags"), "key", "value")),
        aliases=_pairs(pairs(model.get("aliases"), "alias", "version")),
        latest=tuple(
            sorted(
                (
                    LatestVersion(
                        version=str(v.get("version", "")),
                        stage=str(v.get("current_stage", "")),
                        status=str(v.get("status", NO_STATUS)),
                        updated_at=int(v.get("last_updated_timestamp") or 0),
                        tags=_pairs(pairs(v.get("tags"), "key", "value")),
                    )
                    for v in model.get("latest_versions") or ()
                ),
                key=lambda v: (v.stage, v.version),
            )
        ),
    )


def rest_page(
    rest: RestGet, max_results: int, token: str | None
) -> tuple[dict[str, ModelFingerprint], str | None]:
    """One page of the listing read as JSON (``controller.registry_rest``): each model's
    fingerprint by name, and the next page's token (None: the last)."""
    from mlflow.protos.model_registry_pb2 import SearchRegisteredModels

    params: dict[str, Any] = {"max_results": max_results}
    if (only := rest.models_filter(None)) is not None:
        params["filter"] = only
    if token:
        params["page_token"] = token
    answer = rest.get(SearchRegisteredModels, params)
    found = {str(m["name"]): fingerprint_json(m) for m in answer.get("registered_models", ())}
    return found, answer.get("next_page_token") or None

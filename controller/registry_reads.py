"""What the registry's reads give the controller (``controller/registry.py``), and the reads of
many models in one request (``name IN (...)``) that the passes share
(``controller/registry_shared.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from controller.registry_rest import NO_STATUS, RestGet, pairs

# Models per page of a read of many: the most MLflow's REST API answers for registered models.
PAGE = 1000


@dataclass(frozen=True)
class ObservedModel:
    created_at: int
    aliases: dict[str, str]
    tags: dict[str, str]


@dataclass(frozen=True)
class ObservedVersion:
    version: str
    status: str
    source: str | None
    # The version's tags as the registry holds them (the controller writes ``sigserve.*``).
    tags: dict[str, str] = field(default_factory=dict)
    # When the registry created it (ms since the epoch, the registry's clock).
    created_at: int | None = None

    @property
    def ready(self) -> bool:
        return self.status == "READY"


def _millis(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and value > 0 else None


def observed_model(m: Any) -> ObservedModel:
    """One ``mlflow.entities.model_registry.RegisteredModel``, as the reconciler needs it."""
    return ObservedModel(
        created_at=int(m.creation_timestamp),
        aliases={str(k): str(v) for k, v in (m.aliases or {}).items()},
        tags={str(k): str(v) for k, v in (m.tags or {}).items()},
    )


def batchable(name: str) -> bool:
    """Whether ``name`` can be one of a ``name IN (...)`` filter. MLflow 3.17's parser takes no
    backslash in an IN list: ``IN ('ok', 'x\\')`` is refused (INVALID_PARAMETER_VALUE), and
    ``IN ('a\\b')`` finds nothing. ``name = "x\\"`` (verbatim, double quotes) finds it."""
    return "\\" not in name


def _in(names: list[str]) -> str:
    if len(names) == 1 and not batchable(names[0]):
        return f'name = "{names[0]}"'
    # IN for one name too: MLflow's parser finds no model for name='it\\'s' (a model with a
    # quote in its name had no versions), and finds it with IN.
    return "name IN (" + ", ".join("'" + n.replace("'", "\\'") + "'" for n in names) + ")"


def search_models(
    client: Any, names: list[str], rest: RestGet | None = None
) -> dict[str, ObservedModel]:
    """The registered models among ``names`` (one absent: not in the registry), paged; read as
    JSON with ``rest`` (``controller.registry_rest``), else through the client."""
    found: dict[str, ObservedModel] = {}
    if rest is not None:
        from mlflow.protos.model_registry_pb2 import SearchRegisteredModels

        only = rest.models_filter(_in(names))
        for m in _pages(rest, SearchRegisteredModels, only, "registered_models"):
            found[str(m["name"])] = ObservedModel(
                created_at=int(m.get("creation_timestamp") or 0),
                aliases=pairs(m.get("aliases"), "alias", "version"),
                tags=pairs(m.get("tags"), "key", "value"),
            )
        return found
    token: str | None = None
    while True:
        page = client.search_registered_models(_in(names), max_results=PAGE, page_token=token)
        for m in page:
            found[str(m.name)] = observed_model(m)
        token = page.token
        if not token:
            return found


def _pages(rest: RestGet, api: type, only: str | None, key: str) -> Iterator[dict[str, Any]]:
    token: str | None = None
    while True:
        params: dict[str, Any] = {"filter": only, "max_results": PAGE}
        if token:
            params["page_token"] = token
        answer = rest.get(api, params)
        yield from answer.get(key, ())
        token = answer.get("next_page_token") or None
        if not token:
            return


def search_versions(
    client: Any, names: list[str], note: Callable[[str, str, str | None], None],
    rest: RestGet | None = None,
) -> dict[str, list[ObservedVersion]]:
    """Every version of each of ``names``, paged; ``note`` told each version's source. Read
    as JSON with ``rest`` (``controller.registry_rest``), else through the client."""
    found: dict[str, list[ObservedVersion]] = {n: [] for n in names}
    if rest is not None:
        from mlflow.protos.model_registry_pb2 import SearchModelVersions

        for v in _pages(rest, SearchModelVersions, _in(names), "model_versions"):
            name, version, source = str(v.get("name", "")), str(v.get("version", "")), \
                str(v.get("source", ""))
            found.setdefault(name, []).append(ObservedVersion(
                version=version,
                status=str(v.get("status", NO_STATUS)),
                source=source,
                tags=pairs(v.get("tags"), "key", "value"),
                created_at=_millis(v.get("creation_timestamp")),
            ))  # fmt: skip
            note(name, version, source)
        return found
    token: str | None = None
    while True:
        page = client.search_model_versions(_in(names), max_results=PAGE, page_token=token)
        for v in page:
            found.setdefault(str(v.name), []).append(ObservedVersion(
                version=str(v.version),
                status=str(v.status),
                source=v.source,
                tags={str(k): str(t) for k, t in (v.tags or {}).items()},
                created_at=_millis(v.creation_timestamp),
            ))  # fmt: skip
            note(str(v.name), str(v.version), v.source)
        token = page.token
        if not token:
            return found

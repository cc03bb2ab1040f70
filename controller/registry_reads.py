"""What the registry's reads give the controller (``controller/registry.py``), and the reads of
many models in one request (``name IN (...)``) that the passes share
(``controller/registry_shared.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


def search_models(client: Any, names: list[str]) -> dict[str, ObservedModel]:
    """The registered models among ``names`` (one absent: not in the registry), paged."""
    found: dict[str, ObservedModel] = {}
    token: str | None = None
    while True:
        page = client.search_registered_models(_in(names), max_results=PAGE, page_token=token)
        for m in page:
            found[str(m.name)] = observed_model(m)
        token = page.token
        if not token:
            return found


def search_versions(
    client: Any, names: list[str], note: Callable[[str, str, str | None], None]
) -> dict[str, list[ObservedVersion]]:
    """Every version of each of ``names``, paged; ``note`` told each version's source."""
    found: dict[str, list[ObservedVersion]] = {n: [] for n in names}
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

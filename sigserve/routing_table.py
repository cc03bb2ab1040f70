"""The routing table: what the controller decided and the serving app obeys.

The controller publishes a new table, with a higher ``revision``, each time a decision changes.
The serving app answers only from the table it holds: a model or version missing from it is
unknown (404), a pending one is not ready (503), a quarantined one is refused (409). Nothing
outside the table is ever loaded, so the serving app fails closed.

Signatures travel in MLflow's own dict form (``ModelSignature.to_dict()``: ``inputs``,
``outputs`` and ``params`` as JSON strings), so both sides parse them with MLflow itself.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class VersionState(StrEnum):
    LIVE = "live"
    QUARANTINED = "quarantined"
    PENDING = "pending"


class VersionEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: str
    state: VersionState
    reasons: list[str] = Field(default_factory=list)
    # The version's own signature, None when it was logged without one.
    signature: dict[str, str | None] | None = None


class ModelEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    default_version: str | None
    # The contract: the signature of the default version.
    contract: dict[str, str | None] | None = None
    versions: dict[str, VersionEntry] = Field(default_factory=dict)


class RoutingTable(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    revision: int
    # Made once with the controller's database. Revisions only compare within one epoch: a
    # controller whose database was replaced starts counting again, and must still be obeyed.
    epoch: str = ""
    models: dict[str, ModelEntry] = Field(default_factory=dict)


def supersedes(new: RoutingTable, held: RoutingTable | None) -> bool:
    """Whether ``new`` should replace ``held``: a higher revision, or another epoch."""
    return held is None or new.epoch != held.epoch or new.revision > held.revision

"""SQLAlchemy mapping of the controller's state.

The tables are created only by the Alembic migrations in ``migrations/``; this module describes
them for the ORM and must stay in step with the latest migration.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class RegisteredModelRow(Base):
    __tablename__ = "registered_models"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    default_version: Mapped[str | None] = mapped_column(String(32))
    # The signature dict of the default version at the time it was pinned.
    contract: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    policy: Mapped[str] = mapped_column(String(32))
    environment_policy: Mapped[str] = mapped_column(String(16), default="isolate")
    # The registry's creation_timestamp (ms) of the model this row describes.
    registry_created_at: Mapped[int | None] = mapped_column(BigInteger)
    # Set while the model is deleted from the registry: kept (contract, pin, policies, no
    # versions) for when the name comes back; not served, not listed.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The registry's default alias as last seen, and the last alias move refused.
    alias_seen: Mapped[str | None] = mapped_column(String(32))
    alias_refusal: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    registry_warning: Mapped[str | None] = mapped_column(Text)
    # Batching when served, from the model's registry tags; None: serving's own defaults.
    max_batch_size: Mapped[int | None] = mapped_column(Integer)
    batch_wait_ms: Mapped[float | None] = mapped_column(Float)
    # A predict call's deadline when served, from the model's tag; None: serving's own.
    predict_timeout_s: Mapped[float | None] = mapped_column(Float)
    # The model's ``sigserve.proof`` tag (on|off); NULL: the controller's default.
    proof_policy: Mapped[str | None] = mapped_column(String(8))
    # One more with every write: a write from an older read is refused (controller/store.py).
    generation: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    versions: Mapped[list[ModelVersionRow]] = relationship(
        back_populates="model", cascade="all, delete-orphan", order_by="ModelVersionRow.number"
    )


class ModelVersionRow(Base):
    __tablename__ = "model_versions"

    model_name: Mapped[str] = mapped_column(
        ForeignKey("registered_models.name", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[str]] = mapped_column(JSON)
    signature: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Whether the signature was read at all (a version may have none, which is not the same).
    signature_read: Mapped[bool] = mapped_column(default=False)
    # Digest of (contract, policy) the decision was made against; a change means re-decide.
    decided_against: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    source: Mapped[str | None] = mapped_column(Text)
    # The checked artifact: where serving loads it and the SHA-256 of its MLmodel file.
    artifact_uri: Mapped[str | None] = mapped_column(Text)
    mlmodel_digest: Mapped[str | None] = mapped_column(String(64))
    # Every file of the checked artifact, its size and (up to a limit) its SHA-256.
    manifest: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # What the artifact needs: requirements, Python version, whether it is pickled.
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    # A quarantine or release by hand; survives re-checks until removed.
    override: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # A load of this artifact that failed on a serving replica, as it reported it.
    load_failure: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The proof a serving replica reported for this artifact (controller/proofs.py).
    proof: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The environment of its own the version is assigned (controller/own_environments.py).
    own_environment: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    model: Mapped[RegisteredModelRow] = relationship(back_populates="versions")


class WebhookDeliveryRow(Base):
    __tablename__ = "webhook_deliveries"

    delivery_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEventRow(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(256), index=True)
    version: Mapped[str | None] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class TableRevisionRow(Base):
    __tablename__ = "table_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # BIGINT: a catch-up may move it far (controller/store.py, ``REVISION_CEILING``).
    revision: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[str] = mapped_column(String(32))
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReconcileRequestRow(Base):
    """A model a follower was asked to reconcile (a webhook, an admin call), for the leader."""

    __tablename__ = "reconcile_requests"

    model_name: Mapped[str] = mapped_column(String(256), primary_key=True)
    # The audit log's actor of the reconcile (``webhook:<delivery id>``, ``admin``...).
    actor: Mapped[str] = mapped_column(String(128))
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# The rollout tables (migration 0014) live in their own module, mapped on this Base.
from controller import rollout_schema as _rollout_schema  # noqa: E402, F401

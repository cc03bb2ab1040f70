"""The only module that talks to the MLflow registry.

MLflow's client raises its own exceptions for every kind of failure; here they become
``RegistryUnavailable`` (try again later) or ``RegisteredModelGone`` (stop trying), so the
worker can tell temporary from permanent without knowing MLflow.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from controller.exceptions import RegisteredModelGone, RegistryUnavailable
from controller.records import Signature

T = TypeVar("T")

WEBHOOK_EVENTS: list[Any] = [
    "registered_model.created",
    "model_version.created",
    "model_version_tag.set",
    "model_version_tag.deleted",
    "model_version_alias.created",
    "model_version_alias.deleted",
]


@dataclass(frozen=True)
class ObservedVersion:
    version: str
    status: str
    source: str | None

    @property
    def ready(self) -> bool:
        return self.status == "READY"


class Registry:
    def __init__(self, tracking_uri: str) -> None:
        # MLflow's own retries back off for minutes; the worker retries with its own backoff.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def _call(self, fn: Callable[[], T], *, model: str | None = None) -> T:
        from mlflow.exceptions import MlflowException

        try:
            return fn()
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST" and model is not None:
                raise RegisteredModelGone(model) from exc
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc.message}") from exc
        except OSError as exc:  # requests' errors are OSErrors
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def ping(self) -> None:
        self._call(lambda: self._client.search_registered_models(max_results=1))

    def model_names(self) -> list[str]:
        def fetch() -> list[str]:
            names: list[str] = []
            token: str | None = None
            while True:
                page = self._client.search_registered_models(max_results=500, page_token=token)
                names.extend(m.name for m in page)
                token = page.token
                if not token:
                    return names

        return self._call(fetch)

    def versions(self, name: str) -> list[ObservedVersion]:
        def fetch() -> list[ObservedVersion]:
            self._client.get_registered_model(name)
            escaped = name.replace("'", "\\'")
            found: list[ObservedVersion] = []
            token: str | None = None
            while True:
                page = self._client.search_model_versions(
                    f"name='{escaped}'", max_results=200, page_token=token
                )
                found.extend(
                    ObservedVersion(version=str(v.version), status=str(v.status), source=v.source)
                    for v in page
                )
                token = page.token
                if not token:
                    return found

        return self._call(fetch, model=name)

    def signature(self, name: str, version: str) -> Signature | None:
        """The version's signature from its MLmodel file (the registry itself holds none)."""

        def fetch() -> Signature | None:
            from mlflow.artifacts import download_artifacts
            from mlflow.models import Model

            uri = self._client.get_model_version_download_uri(name, version)
            with tempfile.TemporaryDirectory() as tmp:
                path = download_artifacts(
                    artifact_uri=f"{uri.rstrip('/')}/MLmodel",
                    dst_path=tmp,
                    tracking_uri=self.tracking_uri,
                )
                signature = Model.load(path).signature
            return dict(signature.to_dict()) if signature is not None else None

        return self._call(fetch, model=name)

    def ensure_webhook(self, name: str, url: str, secret: str) -> str:
        """Create or update the controller's webhook; returns its id. Safe to repeat."""

        def upsert() -> str:
            existing = [w for w in self._client.list_webhooks(max_results=1000) if w.name == name]
            if existing:
                hook = self._client.update_webhook(
                    existing[0].webhook_id,
                    url=url,
                    events=list(WEBHOOK_EVENTS),
                    secret=secret,
                    status="ACTIVE",
                )
                for extra in existing[1:]:
                    self._client.delete_webhook(extra.webhook_id)
            else:
                hook = self._client.create_webhook(
                    name=name, url=url, events=list(WEBHOOK_EVENTS), secret=secret
                )
            return str(hook.webhook_id)

        return self._call(upsert)

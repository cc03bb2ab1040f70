"""The controller's webhook in MLflow: the events it asks for, created or updated by name."""

from __future__ import annotations

from typing import Any

WEBHOOK_EVENTS: list[Any] = [
    "registered_model.created",
    "model_version.created",
    "model_version_tag.set",
    "model_version_tag.deleted",
    "model_version_alias.created",
    "model_version_alias.deleted",
]


def upsert_webhook(client: Any, name: str, url: str, secret: str) -> str:
    """Create or update the webhook ``name`` (the others of that name deleted); its id."""
    existing = [w for w in client.list_webhooks(max_results=1000) if w.name == name]
    if existing:
        hook = client.update_webhook(
            existing[0].webhook_id,
            url=url,
            events=list(WEBHOOK_EVENTS),
            secret=secret,
            status="ACTIVE",
        )
        for extra in existing[1:]:
            client.delete_webhook(extra.webhook_id)
    else:
        hook = client.create_webhook(
            name=name, url=url, events=list(WEBHOOK_EVENTS), secret=secret
        )
    return str(hook.webhook_id)

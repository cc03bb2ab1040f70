"""What the registry's listing shows of each change, on the session's real MLflow server.

The resync reconciles only models whose fingerprint in ``search_registered_models`` moved
(``controller/resync.py``); these are the facts it rests on (docs/architecture.md, "What the
resync sees"), held here against MLflow 3.17 over REST. A controller of the session may
reconcile this model meanwhile and write its verdict tags and alias back: nothing asserted
here depends on what it writes (it never creates or deletes a version, and its writes do not
move ``last_updated_timestamp`` either). Versions are registered from a bare run: the registry
accepts them, so this costs seconds, not logged models.
"""

from __future__ import annotations

import time
import uuid

from mlflow import MlflowClient

from controller.registry import Registry
from controller.registry_listing import ModelFingerprint


def _no_gap() -> None:
    # Timestamps are milliseconds: two calls in one would look unchanged for a reason that is
    # not the one asserted.
    time.sleep(0.005)


def test_the_listing_shows_which_registry_changes_moved_a_model(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    registry = Registry(tracking_uri)
    name = f"listing-{uuid.uuid4().hex[:8]}"
    run = client.create_run(client.create_experiment(name))

    def listed() -> ModelFingerprint:
        _no_gap()
        return registry.listing()[name]

    def new_version() -> str:
        _no_gap()
        source = f"runs:/{run.info.run_id}/model"
        return str(client.create_model_version(name, source, run_id=run.info.run_id).version)

    client.create_registered_model(name)
    created = listed()
    assert created.updated_at == created.created_at and created.latest == ()

    # A new version: the update time moves, and the newest version is shown.
    v1 = new_version()
    after_v1 = listed()
    assert after_v1.updated_at > created.updated_at
    assert [v.version for v in after_v1.latest] == [v1]
    assert after_v1.latest[0].status == "READY" and after_v1.latest[0].stage == "None"
    v2 = new_version()
    before = listed()
    assert before.updated_at > after_v1.updated_at
    assert [v.version for v in before.latest] == [v2]

    # A model tag, an alias set and deleted: shown, and the update time does not move.
    client.set_registered_model_tag(name, "r.tag", "1")
    now = listed()
    assert ("r.tag", "1") in now.tags and now.updated_at == before.updated_at
    client.set_registered_model_alias(name, "r-alias", v1)
    now = listed()
    assert ("r-alias", v1) in now.aliases and now.updated_at == before.updated_at
    client.delete_registered_model_alias(name, "r-alias")
    now = listed()
    assert "r-alias" not in dict(now.aliases) and now.updated_at == before.updated_at

    # A version tag: shown on the newest version only; on an older one, nowhere (a lost
    # webhook of it waits for the full pass).
    client.set_model_version_tag(name, v2, "r.vtag", "1")
    now = listed()
    assert ("r.vtag", "1") in now.latest[0].tags and now.updated_at == before.updated_at
    client.set_model_version_tag(name, v1, "r.old", "1")
    now = listed()
    assert "r.old" not in repr(now) and now.updated_at == before.updated_at

    # A version deleted, an older one or the newest: the update time moves.
    client.delete_model_version(name, v1)
    now = listed()
    assert now.updated_at > before.updated_at and [v.version for v in now.latest] == [v2]
    client.delete_model_version(name, v2)
    emptied = listed()
    assert emptied.updated_at > now.updated_at and emptied.latest == ()

    # Deleted: not listed. Created again: another creation time.
    client.delete_registered_model(name)
    _no_gap()
    assert name not in registry.listing()
    client.create_registered_model(name)
    again = listed()
    assert again.created_at > created.created_at
    client.delete_registered_model(name)

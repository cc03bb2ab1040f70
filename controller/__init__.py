"""The controller: decides which registered model versions may be served.

It watches the MLflow registry two ways: webhooks (fast, but deliveries can be lost and deletions
fire no event) and a periodic resync (slow, but it is what makes the state right). Either way it
only enqueues a registered model's name (webhooks before the resync's); the worker then reconciles
that model, several models at once and one pass per model at a time: it reads the model's
versions from the registry, fetches each new version's signature, decides ``live`` or
``quarantined`` against the model's contract, records the decision with its reasons and publishes
a new revision of the routing table that the serving app long-polls.

Layers, outermost first:

- ``app`` (FastAPI wiring, lifespan), ``webhooks``, ``admin``, ``health``, ``long_poll`` (the
  routing table, as serving replicas wait for it), ``load_failures`` (serving replicas' reports
  of artifacts they could not load): HTTP.
- ``worker`` (passes, retries), ``work_queue`` (the two-lane de-duplicating queue), ``coalescer``
  (one publish for the passes that finish together), ``priming`` (what a new epoch's first table
  waits for: every listed model reconciled), ``resync`` (the periodic resync, pruning and
  followers' requests, all feeding the queue), ``reconciler`` (one model, one pass, safe to
  repeat), ``registry_sync`` (the alias and tags, read and written back) and ``own_writes``
  (those writes remembered, so that the webhooks they cause are not work again).
- ``leadership`` (which controller runs the worker when several share one PostgreSQL: a session
  advisory lock) and ``table_sync`` (a controller's long-poll fed with the tables others
  published); on SQLite the one controller always leads.
- ``compatibility`` (signature against contract) and ``environment`` (artifact against the
  serving environment): the decision itself; ``decisions`` applies both to every version of a
  model, ``commands`` are the admin changes.
- ``store`` owns every database transaction (``exceptions`` holds ``GenerationConflict`` and
  ``SteppedDown``, which refuse a write from a stale read or a controller that stopped leading);
  ``schema`` is the SQLAlchemy mapping, created only by the Alembic migrations in
  ``migrations/``; ``rows`` maps its rows to the ``records`` the rest of the controller passes
  around; ``table_builder`` turns records into the routing table (``wire.routing_table``) and
  ``broadcaster`` hands each new one to the waiting long-polls.
- ``registry``: the only module that talks to MLflow.
- ``metrics`` (the Prometheus metrics), ``probe`` (the registry's reachability for
  ``/readyz``), ``decision_log`` (each committed decision logged and counted) and ``publisher``
  (publishing the table: timed, logged with what it changes, the registration -> live
  histogram): what an operator sees (``docs/operations.md``).
"""

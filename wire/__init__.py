"""What sigserve's parts say to each other and to their clients, and nothing else.

Both services import this package; it imports neither (nor ``sigserve``, the launcher that
imports everything), so the arrows run one way:

    sigserve (CLI, local stack, demo)  ->  controller, serving  ->  wire

- ``routing_table``: the versioned description of what may be served, the only thing the
  controller (``controller/``) and the serving app (``serving/``) agree on. They never import
  each other; they meet over HTTP with this schema.
- ``table_signature``: the table's canonical JSON and its HMAC, keyed from the serving token,
  so replicas take only tables the controller signed (docs/security.md).
- ``private_dirs``: directories under a shared temp dir that only this user may have made.
- ``problems``: the one RFC 9457 problem+json dialect both services answer errors in.
- ``logs``: the one log format both services write (JSON lines in files, text on a terminal)
  and the trail fields that connect a webhook to the replica that took its decision.
"""

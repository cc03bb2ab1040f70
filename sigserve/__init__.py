"""sigserve: signature-aware serving of MLflow registry models.

This package holds what the two services share and what runs them together:

- ``routing_table``: the versioned description of what may be served, the only thing the
  controller (``controller/``) and the serving app (``serving/``) agree on. They never import
  each other; they meet over HTTP with this schema.
- ``cli`` and ``stack``: the ``sigserve`` command and the one-command local stack.
- ``demo``: the demo models that ``sigserve up`` registers.
"""

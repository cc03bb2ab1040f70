"""sigserve: signature-aware serving of MLflow registry models; the part that runs the others.

This package imports everything and nothing imports it (``controller`` and ``serving`` share
only ``wire``):

- ``cli``: the ``sigserve`` command; ``admin_cli`` (with ``admin_render``) its admin commands on
  the controller's admin API, through ``admin_client``.
- ``stack``, ``local_stack``, ``processes``: the one-command local stack, and its parts as the
  tests and benchmarks start them.
- ``cluster``: deploying the serving app onto a running Ray cluster.
- ``demo``: the demo models that ``sigserve up`` registers.
"""

"""The serving part of sigserve: one long-running, multiplexed Ray Serve application.

An ingress deployment (FastAPI) answers every model's HTTP API from a routing table that the
controller publishes: it validates requests against the model's contract (the signature of its
pinned default version), picks the version (path, ``serve_multiplexed_model_id`` header or
default) and refuses, before anything is loaded, versions that are unknown (404), pending (503)
or quarantined (409). It then hands the request to a model deployment that keeps an LRU of
loaded MLflow pyfunc models per replica, keyed ``name/version``.

The table reaches the ingress by a long-poll on the controller and is kept in Ray's GCS, so a
replica that starts while the controller is down still serves the last decisions. This package
never imports ``controller``; the two meet over HTTP and ``sigserve.routing_table``.

Modules, one concept each: ``settings`` (SIGSERVE_* env), ``exceptions`` (the error
hierarchy), ``problems`` (errors -> RFC 9457), ``contract`` (signature -> pydantic models),
``frames`` (records <-> DataFrames and predictions), ``resolve`` (version selection),
``table_source`` and ``gcs_store`` (the table and its copy in Ray), ``openapi`` (per-model
docs), ``api`` (the FastAPI app), ``loader`` (MLflow loading, no Ray), ``model_runner`` and
``ingress`` (the two deployments) and ``app`` (``build_app``).
"""

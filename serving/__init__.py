"""The serving part of sigserve: one long-running, multiplexed Ray Serve application.

One deployment, ``Server``, behind Ray's direct ingress (HAProxy). Each replica answers every
model's HTTP API from a routing table that the controller publishes: it validates requests
against the model's contract (the API its clients were promised: docs/architecture.md), picks
the version
(path, ``serve_multiplexed_model_id`` header or default) and refuses, before anything is loaded,
versions that are unknown (404), pending (503) or quarantined (409). The same replica holds the
models it runs: an LRU of loaded MLflow pyfunc models keyed ``name/version@key``
(``@serve.multiplexed``), concurrent requests for one version predicted in one call, and each new
default loaded before the replica answers for it.

The table reaches a replica by a long-poll on the controller and is kept in Ray's GCS, so a
replica that starts while the controller is down still serves the last decisions. This package
never imports ``controller``; the two meet over HTTP (the table one way, reports of artifacts
that cannot be loaded the other) and ``wire.routing_table``.

Modules, one concept each: ``settings`` (SIGSERVE_* env), ``exceptions`` (the error
hierarchy), ``problems`` (errors -> RFC 9457), ``contract`` (signature -> pydantic models),
``frames`` (records <-> DataFrames and predictions), ``resolve`` (version selection),
``table_source``, ``table_poll_failures``, ``retry_after``, ``signed_table`` and ``gcs_store``
(the table, how its poll fails and waits, a controller's Retry-After, its signature checked, and
its copy in Ray), ``default_switch`` (what a replica answers while a new default warms),
``scoring_protocol`` and ``bodies`` (MLflow's ``/invocations`` protocol; bodies within
limits), ``open_inference`` and ``inference_tensors`` (the Open Inference Protocol's routes and
its tensors), ``openapi`` (per-model docs), ``api`` (the FastAPI app; no Ray), ``batching``
(per-version batches; no Ray),
``batch_inputs`` (which requests may share a predict call, and their input; no Ray),
``deadlines`` (a predict call's deadline and the versions a hung one wedges; no Ray),
``model_host`` (batches, warm-up, the API's backend; no Ray), ``streaming``
(``predict_stream`` over Server-Sent Events on ``/serve``; no Ray), ``loader`` (MLflow loading; no
Ray), ``model_ids`` (the artifact a multiplexed model id names; no Ray), ``predict_call``
(one predict call, its errors as the API answers them; no Ray), ``load_ahead`` (a model
loaded before Ray's multiplexer is asked, so a failed load evicts nothing), ``load_faults``
(whose fault a failed load is: the artifact's or the replica's),
``failed_loads`` (a failed load remembered, with its backoff, for the 503's ``Retry-After``),
``load_reports`` (telling the controller of artifacts that cannot load; no Ray),
``proofs`` (a version awaiting its proof loaded and called on its own example, in the background),
``environments`` (environments of a version's own: one named Ray actor per environment, built
by the prover, shared by every replica, touched while a table names it, let go when none does),
``environment_actors`` (how it reaches Ray, and a replica's hold on a model there),
``environment_builds`` (uv, the package index, a failed build's reason, credentials kept out;
no Ray), ``environment_host`` (both ends of a model served from its environment, reaped when
idle; no Ray), ``environment_errors`` (errors that cross as data; no Ray),
``environment_isolated`` and ``environment_child`` (a venv that inherits nothing and the model
host process in it, started again when it dies; no Ray),
``environment_codec`` (what crosses to an environment: Arrow and JSON, never pickles; no Ray),
``mlflow_frames`` and ``tensor_inputs`` (MLflow's scoring bodies read as MLflow's parser reads
them, columns and numeric tensors, so they batch; no Ray), ``rollout_routing`` (which version a
request naming none goes to during a rollout), ``rollout_counts`` and ``rollout_path`` (what a
replica counts and reports of a rollout), ``rollout_shadow`` (the candidate's shadow requests,
off the client's path), ``rollout_warm`` (a candidate loaded before any request is routed to it),
``recorder`` (what the request path tells the metrics; no Ray), ``metrics`` (the replicas'
metrics on ``ray.serve.metrics``), ``server`` (the deployment, its own JSON log file) and
``app`` (``build_app``).
"""

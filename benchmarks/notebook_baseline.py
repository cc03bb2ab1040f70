"""The notebook's final Ray Serve deployment, re-created as a baseline for the benchmarks.

The source is the public notebook sigserve grew from ("Signature-Aware Model Serving from MLflow
with Ray Serve", /work/shared/seed/000_c98bd40cf072a2dd.txt), its last deployment: one FastAPI
ingress deployment per registered model, with Ray Serve's defaults (``@serve.deployment`` with no
arguments: one replica, ``max_ongoing_requests=5``), request and response models generated from
the default version's MLflow signature, and the version multiplexed by the
``serve_multiplexed_model_id`` header (``@serve.multiplexed(max_num_models_per_replica=2)``),
each loaded with ``mlflow.pyfunc.load_model("models:/name/version")`` and checked against the
default version's signature. ``POST {route_prefix}/serve`` takes ONE record (a JSON object, the
generated input model) and answers a list of output records.

The code below is the notebook's, changed only where it must be (each change marked ADAPTED):

- ``pydantic.Field(required=True)``: an extra keyword pydantic 2 deprecates (it only added
  ``"required": true`` to the JSON schema); ``pydantic.Field()`` (no default) is what makes a
  field required, as before.
- MLflow's ``Array`` type (MiniLM's ``embedding`` output) has no ``to_python()``: it maps to
  ``list[element type]``.
- The notebook's model returned a list of dicts (a Hugging Face pipeline's output); MLflow pyfuncs
  here return a DataFrame, which FastAPI cannot validate against ``List[OutputModel]``, so a
  DataFrame is turned into its records.
- The 409 answer of an incompatible version was ``[{"translation_text": "FAILED"}]``, tied to the
  notebook's translation model (any other output model would fail to validate it): it is ``[]``.
- To run next to sigserve in the stack's Ray (``notebook_app``): its own app name and route
  prefix, and a fractional CPU reservation (the default reserves 1 CPU per replica; two of them
  plus sigserve do not fit the stack's 2 logical CPUs). The reservation only schedules: Ray sets
  ``OMP_NUM_THREADS=1`` for any reservation below 2 CPUs, as for 1, and limits nothing.

No ``from __future__ import annotations`` here, as in the notebook: FastAPI reads the endpoint's
annotations, which name classes local to ``deployment_from_model_name``.
"""

import sys
from typing import Any, List  # noqa: UP035 - the notebook's spelling

import mlflow
import pandas as pd
import pydantic
import ray.cloudpickle
from fastapi import FastAPI, Response, status
from mlflow.types.schema import Array
from ray import serve
from ray.serve import Application

# Replicas unpickle the deployment class; the notebook defined it in ``__main__`` (pickled by
# value). This module is not importable in a Ray worker (``benchmarks/`` is not on its path), so
# it is pickled by value too.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # type: ignore[no-untyped-call]


def _python_type(mlflow_type: Any) -> Any:
    # ADAPTED: the notebook called ``v.type.to_python()``, which ``Array`` does not have.
    if isinstance(mlflow_type, Array):
        return list[_python_type(mlflow_type.dtype)]  # type: ignore[misc]
    return mlflow_type.to_python()


def schema_to_pydantic(
    schema: mlflow.types.schema.Schema, *, name: str
) -> type[pydantic.BaseModel]:
    return pydantic.create_model(  # type: ignore[no-any-return, call-overload]
        name,
        **{
            # ADAPTED: pydantic.Field(required=True) -> pydantic.Field() (required either way).
            k: (_python_type(v.type), pydantic.Field())
            for k, v in schema.input_dict().items()
        },
    )


def get_req_resp_signatures(
    model_signature: mlflow.models.ModelSignature,
) -> tuple[type[pydantic.BaseModel], type[pydantic.BaseModel]]:
    inputs: mlflow.types.schema.Schema = model_signature.inputs
    outputs: mlflow.types.schema.Schema = model_signature.outputs

    return (
        schema_to_pydantic(inputs, name="InputModel"),
        schema_to_pydantic(outputs, name="OutputModel"),
    )


def deployment_from_model_name(model_name: str, default_version: str = "1") -> Any:
    app = FastAPI()
    model_info = mlflow.models.get_model_info(f"models:/{model_name}/{default_version}")
    input_datamodel, output_datamodel = get_req_resp_signatures(model_info.signature)

    @serve.deployment
    @serve.ingress(app)
    class DynamicallyDefinedDeployment:
        MODEL_NAME: str = model_name
        DEFAULT_VERSION: str = default_version

        @serve.multiplexed(max_num_models_per_replica=2)  # type: ignore[untyped-decorator]
        async def get_model(self, model_version: str) -> Any:
            model = mlflow.pyfunc.load_model(f"models:/{self.MODEL_NAME}/{model_version}")

            if model.metadata.get_model_info().signature != model_info.signature:
                raise ValueError(
                    f"Requested version {model_version} has signature incompatible with that "
                    f"of default version {self.DEFAULT_VERSION}"
                )
            return model

        # TODO: Extend this to support batching (lists of inputs and outputs)
        @app.post("/serve", response_model=List[output_datamodel])  # type: ignore[valid-type]  # noqa: UP006
        async def serve(self, model_input: input_datamodel, response: Response) -> Any:  # type: ignore[valid-type]
            model_id = serve.get_multiplexed_model_id()
            if model_id == "":
                model_id = self.DEFAULT_VERSION

            try:
                model = await self.get_model(model_id)
            except ValueError:
                response.status_code = status.HTTP_409_CONFLICT
                return []  # ADAPTED: was [{"translation_text": "FAILED"}]

            prediction = model.predict(model_input.dict())  # type: ignore[attr-defined]
            # ADAPTED: a DataFrame (what these pyfuncs return) as records.
            if isinstance(prediction, pd.DataFrame):
                return prediction.to_dict(orient="records")
            return prediction

    return DynamicallyDefinedDeployment


def notebook_app(model_name: str, version: str, *, num_cpus: float = 0.5) -> Application:
    """The notebook's deployment for ``model_name`` (default ``version``), bound, for ``serve.run``.

    Deploy it with its own app name and route prefix next to sigserve's app, e.g.
    ``serve.run(notebook_app("m", "1"), name="notebook-m", route_prefix="/notebook/m")``;
    its endpoint is then ``POST /notebook/m/serve`` with one record. ``MLFLOW_TRACKING_URI``
    reaches the replica with the job's runtime env (``sigserve.stack.start_serving`` sets it).
    """
    deployment = deployment_from_model_name(model_name, default_version=version)
    # ADAPTED: a fractional CPU reservation, to fit the stack's Ray (see the module docstring).
    bound: Application = deployment.options(ray_actor_options={"num_cpus": num_cpus}).bind()
    return bound

"""Run by an MLflow 2.x client in a venv of its own (``tests/zoo/foreign_env.py``), never by
sigserve's interpreter: logs and registers a scikit-learn pipeline (a scaler and a classifier,
with an input example) to the tracking server in ``MLFLOW_TRACKING_URI``, as a team did before
MLflow 3, then predicts in-process on a fixed input and writes what it computed to a JSON file.

Usage: python -I mlflow2_sklearn.py MODEL_NAME OUTPUT_JSON
"""

import json
import sys
import time

import mlflow
import numpy as np
import pandas as pd
import sklearn
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

name, output = sys.argv[1], sys.argv[2]
iris = load_iris(as_frame=True)
features = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
    features, iris.target
)
# Rows the model was not trained on: some between the classes, where probabilities are not 0/1.
rng = np.random.default_rng(17)
probe = features.sample(8, random_state=3).reset_index(drop=True) + rng.normal(0, 0.3, (8, 4))
probe = probe.round(3)

with mlflow.start_run():
    info = mlflow.sklearn.log_model(
        pipeline,
        artifact_path="model",
        input_example=features.head(3),
        signature=infer_signature(features, pipeline.predict_proba(features)),
        pyfunc_predict_fn="predict_proba",
        registered_model_name=name,
    )
registered_at = time.time()
version = info.registered_model_version
loaded = mlflow.pyfunc.load_model(info.model_uri)
predictions = np.asarray(loaded.predict(probe)).tolist()

with open(output, "w") as handle:
    json.dump(
        {
            "version": str(version),
            "registered_at": registered_at,
            "input": probe.to_dict(orient="records"),
            "predictions": predictions,
            "client": {
                "mlflow": mlflow.__version__,
                "scikit-learn": sklearn.__version__,
                "pandas": pd.__version__,
                "numpy": np.__version__,
                "python": sys.version.split()[0],
            },
        },
        handle,
    )

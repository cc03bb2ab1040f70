"""What a version's artifacts say about the environment it was logged in: its requirement lines,
its Python, and whether loading it unpickles Python objects. The facts ``check_environment``
(``controller.environment``) compares with what the serving replicas have.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.environment_secrets import redact

_PICKLE_FORMATS = frozenset({"pickle", "cloudpickle"})


@dataclass(frozen=True)
class ArtifactEnvironment:
    # Credentials cut (``environment_secrets``): what is kept, shown and published of them.
    requirements: list[str] | None
    python_version: str | None
    pickled: bool

    def __post_init__(self) -> None:
        if self.requirements is not None:
            object.__setattr__(self, "requirements", [redact(r) for r in self.requirements])


def is_pickled(mlmodel: Mapping[str, Any]) -> bool:
    """Does loading this model (the parsed MLmodel YAML) unpickle Python objects?

    A pickled PythonModel has ``python_model`` in its python_function flavor. Models from code
    carry ``cloudpickle_version`` too (MLflow writes it unconditionally) but have
    ``model_code_path`` and no ``python_model``, so only ``cloudpickle_version`` without
    ``model_code_path`` counts. Other flavors say so with ``serialization_format``; sklearn's
    ``pickled_model`` key is present for skops too, so it counts only without a format (MLflow
    versions that predate the key always pickled).
    """
    flavors = mlmodel.get("flavors")
    if not isinstance(flavors, Mapping):
        return False
    pyfunc = flavors.get("python_function")
    if isinstance(pyfunc, Mapping):
        if pyfunc.get("python_model"):
            return True
        if "cloudpickle_version" in pyfunc and "model_code_path" not in pyfunc:
            return True
    for conf in flavors.values():
        if not isinstance(conf, Mapping):
            continue
        fmt = conf.get("serialization_format")
        if fmt in _PICKLE_FORMATS or (fmt is None and "pickled_model" in conf):
            return True
    return False

"""The verdict's tag and alias writes, one request each.

``MlflowClient.set_model_version_tag`` and ``set_registered_model_alias`` first ask
``get_registered_model`` whether the model is a prompt (``_raise_if_prompt``), then write: two
requests per write, and MLflow loads the whole registered model (every version, tag and alias)
for the first and once more inside the second (its webhook's event depends on it). Profiled
while the write-back caught up with 1,000 models of 5 versions (docs/benchmarks.md, "A large
registry"), that check was a third of each write's time in the controller and the larger part
of MLflow's ``get_registered_model`` time. The write-back asks the same question once per model
just before its writes: its own read of the model (``Registry.model``) answers a prompt as a
model that is gone (``RegisteredModelGone``), and then nothing is written; a rollout writes to a
model it serves, which no prompt is (MLflow lists and serves no prompt as a model). So the
writes go to
MLflow's registry client directly; errors are told apart as every registry call's are
(``Registry._call``).
"""

from __future__ import annotations

from typing import Any

from controller.registry import Registry, RegistryWriter


class DirectWrites:
    """``registry``'s tag and alias writes without the client's prompt check."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def _client(self) -> Any:
        # The MlflowClient's own registry client (same URI, same credentials and retries).
        client: Any = self._registry._client
        return client._get_registry_client()

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._registry._call(
            lambda: self._client().set_model_version_tag(name, version, key, value),
            model=name, write=True,
        )  # fmt: skip

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._registry._call(
            lambda: self._client().set_registered_model_alias(name, alias, version),
            model=name, write=True,
        )  # fmt: skip


def direct(writer: RegistryWriter) -> RegistryWriter:
    """``writer``, its writes one request each when it is the real registry."""
    return DirectWrites(writer) if isinstance(writer, Registry) else writer

"""A model served from an environment of its own whose host is down answers 503 with
Retry-After, never the model's 500 (serving.predict_call, serving.environment_errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serving.environment_errors import EnvironmentUnavailable
from serving.exceptions import ModelFailed, ModelUnavailable
from serving.loader import LoadedModel
from serving.predict_call import call


class Down:
    def predict(self, data: Any, params: Any = None) -> Any:
        raise EnvironmentUnavailable("the environment's model host exited (killed by SIGKILL)")


class Raises:
    def predict(self, data: Any, params: Any = None) -> Any:
        raise ValueError("its own fault")


def test_an_environment_that_is_down_is_a_503_and_a_model_that_raises_a_500(
    tmp_path: Path,
) -> None:
    with pytest.raises(ModelUnavailable) as down:
        call(LoadedModel(Down(), tmp_path), [1], None)
    assert down.value.status == 503 and down.value.retry_after
    assert "killed by SIGKILL" in down.value.detail
    with pytest.raises(ModelFailed):
        call(LoadedModel(Raises(), tmp_path), [1], None)

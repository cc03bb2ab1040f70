"""A pickle from another stack that cannot be unpickled here is the artifact's fault, so a
replica reports it and the controller quarantines it (issue 17: another major version of a
package is only a warning, and this report is the evidence that replaces the old guess).

The two ways a pickle of another day fails, made for real: the module of its class is gone (a
package the serving image lacks), or the module is there without the class (an attribute that a
later release removed or renamed).
"""

from __future__ import annotations

import importlib
import pickle
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from serving.load_faults import is_replicas_fault


@pytest.fixture()
def module(tmp_path: Path) -> Iterator[ModuleType]:
    name = f"sigserve_old_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text("class Model:\n    pass\n", encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def failure_of(data: bytes) -> BaseException:
    with pytest.raises(Exception) as caught:
        pickle.loads(data)  # noqa: S301  (bytes this test pickled)
    return caught.value


def test_a_pickle_whose_module_is_gone_is_reported(module: ModuleType) -> None:
    data = pickle.dumps(module.Model())
    assert module.__file__ is not None
    Path(module.__file__).unlink()
    sys.modules.pop(module.__name__)
    importlib.invalidate_caches()
    failure = failure_of(data)
    assert isinstance(failure, ModuleNotFoundError)
    assert not is_replicas_fault(failure)


def test_a_pickle_whose_class_was_removed_is_reported(module: ModuleType) -> None:
    data = pickle.dumps(module.Model())
    del module.Model
    failure = failure_of(data)
    assert isinstance(failure, AttributeError)
    assert not is_replicas_fault(failure)

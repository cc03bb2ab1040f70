"""The load suite's stack: the integration tests' session (a real `mlflow server`, the controller
as a child process, Ray Serve on the fast path), reused as it is.

Everything under ``tests/load`` is marked ``load``: ``make test`` leaves it out (a storm of 1,000
registrations and minutes of traffic); ``make load`` runs it and prints its figures.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import (  # noqa: F401 - fixtures, found by pytest by name
    controller_handle,
    ctl,
    grpc_port,
    home,
    secrets,
    serving_url,
    tracking_uri,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/load/" in str(item.fspath):
            item.add_marker(pytest.mark.load)
            item.add_marker(pytest.mark.integration)

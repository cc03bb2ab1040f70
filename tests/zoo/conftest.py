"""The zoo: real models, logged as their users log them, served by the session's real stack.

Every test under ``tests/zoo`` is marked ``zoo``: it may build a virtualenv of other packages
from PyPI (``foreign_env``; cached, so only a first run pays), so ``make test`` leaves it out and
``make zoo`` runs it. The stack is the integration tests' (a real `mlflow server` on a SQL store,
the controller as a child process, Ray Serve): its fixtures are imported here by name.

Figures (``figures`` fixture) are printed as they are taken (``-s``) and again at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.figures import FigureBook, Figures
from tests.integration.conftest import (  # noqa: F401  (fixtures, used by name)
    controller_handle,
    ctl,
    grpc_port,
    home,
    secrets,
    serving_url,
    tracking_uri,
)

_HERE = Path(__file__).parent
_BOOK = FigureBook("zoo figures", ".3g")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "zoo: real models from their own clients, venvs from PyPI (make zoo)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: marked before `-m` selects, so `-m "not zoo"` leaves these out.
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.zoo)
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    _BOOK.summary(terminalreporter)


@pytest.fixture()
def figures(request: pytest.FixtureRequest) -> Figures:
    return _BOOK.figures(request.node.name)


def figures_for(test: str) -> Figures:
    """Figures under a name of one's own (a module-scoped fixture's)."""
    return _BOOK.figures(test)

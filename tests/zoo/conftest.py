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

from tests.integration.conftest import (  # noqa: F401  (fixtures, used by name)
    controller_handle,
    ctl,
    home,
    secrets,
    serving_url,
    tracking_uri,
)

_HERE = Path(__file__).parent
_FIGURES: list[tuple[str, str, str]] = []


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
    if not _FIGURES:
        return
    terminalreporter.section("zoo figures")
    for test, what, value in _FIGURES:
        terminalreporter.write_line(f"{test}: {what} = {value}")


class Figures:
    """Figures of one test: printed at once (``-s``) and in the run's closing summary."""

    def __init__(self, test: str) -> None:
        self.test = test

    def __call__(self, what: str, value: float | int | str, unit: str = "s") -> None:
        text = f"{value:.3g} {unit}" if isinstance(value, float) else f"{value} {unit}"
        _FIGURES.append((self.test, what, text.strip()))
        print(f"[figure] {self.test}: {what} = {text.strip()}", flush=True)


@pytest.fixture()
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(request.node.name)

"""The arrows run one way: ``sigserve -> controller, serving -> wire``, read from the source.

A package that imports one it must not (the controller importing serving, anything importing
the launcher) is named with the module and line that does it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
FORBIDDEN = {
    "wire": {"controller", "serving", "sigserve", "migrations"},
    "controller": {"serving", "sigserve"},
    "serving": {"controller", "sigserve", "migrations"},
}


def imported(path: Path) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_only_what_is_below_it(package: str) -> None:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, package
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in modules
        for name, line in imported(path)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert wrong == []

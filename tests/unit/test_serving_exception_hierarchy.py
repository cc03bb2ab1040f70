"""Every answer the serving app can give is defined in ``serving.exceptions`` and drawn in its
docstring's hierarchy, so the one place to read what a client can get stays the whole list (the
trial errors were once defined in ``serving.trials``). A subclass elsewhere that only adds a
builtin base and keeps its parent's answer (``EnvironmentUnavailable``) is no new answer."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import serving.exceptions as exceptions

SERVING = Path(exceptions.__file__).parent


def _problem_classes() -> set[str]:
    return {
        name
        for name, obj in inspect.getmembers(exceptions, inspect.isclass)
        if issubclass(obj, exceptions.SigserveError) and obj.__module__ == exceptions.__name__
    }


def _answers(node: ast.ClassDef) -> bool:
    """Does the class set an answer of its own (a status or slug)?"""
    return any(
        isinstance(t, ast.Name) and t.id in {"status", "slug"}
        for stmt in node.body
        for t in (stmt.targets if isinstance(stmt, ast.Assign)
                  else [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
    )  # fmt: skip


def test_no_serving_module_defines_an_answer_elsewhere() -> None:
    ours = _problem_classes()
    elsewhere = []
    for path in sorted(SERVING.glob("*.py")):
        if path.name == "exceptions.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                         for b in node.bases}  # fmt: skip
                if bases & ours and _answers(node):
                    elsewhere.append(f"{path.name}: {node.name}")
    assert elsewhere == []


def test_the_docstring_draws_every_error() -> None:
    doc = exceptions.__doc__ or ""
    drawn = {line.split("+-- ")[-1].split()[0] for line in doc.splitlines() if "+-- " in line}
    assert sorted(_problem_classes() - drawn - {"SigserveError"}) == []

"""Figures a run of purpose-built tests prints (``make fault``, ``make zoo``): each at once (with
``-s``) and all again in the run's closing summary, under a section of their own."""

from __future__ import annotations

from typing import Any


class FigureBook:
    """The figures of one suite; its conftest hands ``summary`` to ``pytest_terminal_summary``."""

    def __init__(self, section: str, float_format: str) -> None:
        self.section = section
        self.float_format = float_format
        self.lines: list[tuple[str, str, str]] = []

    def figures(self, test: str) -> Figures:
        return Figures(self, test)

    def summary(self, terminalreporter: Any) -> None:
        if not self.lines:
            return
        terminalreporter.section(self.section)
        for test, what, value in self.lines:
            terminalreporter.write_line(f"{test}: {what} = {value}")


class Figures:
    """Figures of one test."""

    def __init__(self, book: FigureBook, test: str) -> None:
        self.book = book
        self.test = test

    def __call__(self, what: str, value: float | int | str, unit: str = "s") -> None:
        shown = f"{value:{self.book.float_format}}" if isinstance(value, float) else f"{value}"
        text = f"{shown} {unit}".strip()
        self.book.lines.append((self.test, what, text))
        print(f"[figure] {self.test}: {what} = {text}", flush=True)

"""Terminal output: the console, a progress bar fed by metric lines, and tables."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from roadsense.metric_lines import TRAIN_TAG, parse_line

console = Console()
errors = Console(stderr=True)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # control characters except tab


def printable(text: str) -> str:
    """``text`` with control characters (newlines, terminal escapes) written as escapes: names and
    messages that come from the bucket or AWS can neither break a line nor drive the terminal."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


def error_line(text: str) -> None:
    """``text`` in red on stderr as one line: never wrapped (scripts and tests read it whole), and
    never read as markup (AWS messages and paths may hold [brackets])."""
    errors.print(f"[red]{escape(printable(text))}[/]", soft_wrap=True, highlight=False)


class MetricProgress:
    """A progress bar over training timesteps, advanced by ``[train] timesteps=... total_timesteps=...`` lines.

    Every line is printed above the bar, so the full log stays visible.
    """

    def __init__(self, description: str, enabled: bool = True) -> None:
        # Disabled for parallel local sweeps: rich can show one live display at a time.
        self._show_lines = enabled
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[fps]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self._task = self._progress.add_task(description, total=None, fps="")

    def __enter__(self) -> "MetricProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def on_line(self, line: str) -> None:
        if self._show_lines:
            self._progress.console.print(printable(line), markup=False, highlight=False)
        parsed = parse_line(line)
        if parsed is None or parsed[0] != TRAIN_TAG:
            return
        values = parsed[1]
        if "total_timesteps" in values:
            self._progress.update(self._task, total=values["total_timesteps"])
        if "timesteps" in values:
            fps = f"{values['fps']:.0f} steps/s" if "fps" in values else ""
            self._progress.update(self._task, completed=values["timesteps"], fps=fps)

    def on_status(self, text: str) -> None:
        self._progress.update(self._task, description=text)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    result = Table(title=title)
    for column in columns:
        result.add_column(column)
    for row in rows:
        # Text, not markup: cells hold run ids, job names and failure reasons read from AWS.
        result.add_row(*(Text(printable("" if cell is None else str(cell))) for cell in row))
    return result


@dataclass(frozen=True)
class Report:
    """What a command shows: a table, then a legend under it and a warning on stderr, when there are any."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[object]]
    legend: str = ""
    warning: str = ""


def show(report: Report) -> None:
    """The table on stdout, the legend under it, the warning as one line on stderr."""
    console.print(table(report.title, report.columns, report.rows))
    if report.legend:
        console.print(report.legend)
    if report.warning:
        error_line(report.warning)

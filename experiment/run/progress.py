"""Progress on the terminal: the current point, points done of total, ETA, and the last figure measured."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from ..model import FAILED, DeadFigures, PipeFigures, Point


class Progress:
    def __init__(self, say: Callable[[str], None] = print):
        self.say = say
        self.console = Console(stderr=True)
        self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(),
                                TextColumn("{task.fields[last]}"), console=self.console, transient=False)
        self.task: TaskID | None = None

    def __enter__(self) -> Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def start(self, total: int, done: int) -> None:
        self.task = self.bar.add_task("starting", total=total, completed=done, last="")

    def describe(self, text: str) -> None:
        if self.task is not None:
            self.bar.update(self.task, description=text)

    def advance(self, point: Point) -> None:
        figures = point.figures
        if not point.ok:
            last = f"{point.id}: {point.status}"
        elif isinstance(figures, DeadFigures):
            last = f"last: {figures.reply_rate:,.0f} replies/s"
        elif isinstance(figures, PipeFigures):
            last = f"last: {figures.passes_per_s:,.0f} passes/s"
        else:
            last = f"last: {point.id}"
        if self.task is None:
            raise RuntimeError("Progress.advance before Progress.start")
        self.bar.update(self.task, advance=1, last=last)
        if point.status == FAILED:
            self.bar.console.print(f"[yellow]{point.id} failed:[/] {point.reason}")
        elif not self.console.is_terminal:
            # No live bar in a log file or CI: one line per point instead.
            task = self.bar.tasks[self.task]
            what = last if point.ok else f"{point.status}: {point.reason}"
            self.console.print(f"[{int(task.completed)}/{int(task.total or 0)}] {point.id}: {what}",
                               highlight=False)

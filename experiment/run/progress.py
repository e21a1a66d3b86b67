"""Progress on the terminal: the current point, points done of total, ETA, and the last figure measured.

The ETA is the expected seconds of the points still to measure (run/durations.py: a 10-second dead point
with its anatomy window weighs about five 2-second pipetest points), scaled by how long the points measured so
far took against what was expected of them (failed ones included: they took their time, and so do the setup
and ramp-up before each). Without expectations every point weighs the same and the ETA is the mean measured
point times the points left. A skipped point (a level above what the host allows) is recorded at once and
takes no time, so it counts neither in the scale nor in what is left: counted as done, as a time-per-point
estimate over all points would, a run whose top levels are skipped would look nearly finished long before
it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.text import Text

from ..model import FAILED, SKIPPED, DeadFigures, PipeFigures, Point
from . import runlog


def eta_s(measured_s: float, expected_measured: float, expected_left: float) -> float | None:
    """Seconds left: what is expected of the points left to measure, times the measured points' wall time over
    what was expected of them; None before the first point is measured (nothing to go by)."""
    if measured_s < 0 or expected_left < 0:
        raise ValueError(f"eta_s needs measured_s >= 0 and expected_left >= 0 (got {measured_s}, {expected_left})")
    return measured_s / expected_measured * expected_left if expected_measured > 0 else None


def clock_text(seconds: float | None) -> str:
    """h:mm:ss, or -:--:-- when unknown."""
    if seconds is None:
        return "-:--:--"
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class EtaColumn(ProgressColumn):
    """The time left until the task's "eta_at" (a time.monotonic() instant), counting down between points."""

    def __init__(self, clock: Callable[[], float]):
        super().__init__()
        self.clock = clock

    def render(self, task) -> Text:
        eta_at = task.fields.get("eta_at")
        return Text(f"ETA {clock_text(None if eta_at is None else eta_at - self.clock())}", style="progress.remaining")



class Progress:
    def __init__(self, say: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic):
        self.say = say
        self.clock = clock
        # The live bar is the terminal's alone: runlog.terminal_stderr is stderr less the run's log, which gets
        # one line per point instead (see advance).
        self.console = Console(file=runlog.terminal_stderr())
        self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                EtaColumn(clock), TimeElapsedColumn(), TextColumn("{task.fields[last]}"),
                                console=self.console, transient=False,
                                # Not on a terminal (a log file, CI): no bar at all, one line per point.
                                disable=not self.console.is_terminal)
        self.task: TaskID | None = None
        self.total = self.completed = 0
        self.to_skip = 0  # planned skipped points not yet recorded
        self.measured_s = 0.0  # wall time of the points measured since start()
        self.expected_measured = 0.0  # what was expected of them
        self.expected: dict[str, float] | None = None  # of each point left to measure, by id
        self.mark = clock()

    def __enter__(self) -> Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def start(self, total: int, done: int, to_skip: int = 0, expected: Mapping[str, float] | None = None) -> None:
        """total: the run's points, done: those recorded already (a resumed run's), to_skip: of those left,
        the ones that will be recorded as skipped; expected: the seconds each point left to measure is
        expected to take, by id (reproduce.expected_seconds); without it every point weighs the same."""
        self.total, self.completed, self.to_skip = total, done, to_skip
        self.expected = dict(expected) if expected is not None else None
        self.mark = self.clock()
        self.task = self.bar.add_task("starting", total=total, completed=done, last="", eta_at=None)

    def describe(self, text: str) -> None:
        if self.task is not None:
            self.bar.update(self.task, description=text)

    @property
    def to_measure(self) -> int:
        return max(0, self.total - self.completed - self.to_skip)

    def eta(self) -> float | None:
        """Seconds left, as of the last point recorded."""
        left = float(self.to_measure) if self.expected is None else sum(self.expected.values())
        return eta_s(self.measured_s, self.expected_measured, left)

    def record(self, point_id: str, status: str) -> None:
        """Counts a point recorded now: a skipped one takes no time; any other took the time since the last."""
        now = self.clock()
        self.completed += 1
        if status == SKIPPED:
            self.to_skip = max(0, self.to_skip - 1)
        else:
            self.expected_measured += 1.0 if self.expected is None else self.expected.pop(point_id, 0.0)
            self.measured_s += now - self.mark
        self.mark = now

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
        self.record(point.id, point.status)
        eta = self.eta()
        self.bar.update(self.task, advance=1, last=last, eta_at=None if eta is None else self.mark + eta)
        what = last if point.ok else f"{point.status}: {point.reason}"
        line = f"[{self.completed}/{self.total}] {point.id}: {what} (ETA {clock_text(eta)})"
        runlog.log_only(line)
        if point.status == FAILED:
            self.bar.console.print(f"[yellow]{point.id} failed:[/] {point.reason}")
        elif not self.console.is_terminal:
            # No live bar in a log file or CI: one line per point instead.
            self.console.print(line, highlight=False)

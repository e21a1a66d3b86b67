"""What a report says about going past the host's open-file cap: the dead connections held by
ephttpd's helper processes, the level measured both ways, the backends that stop at the cap and their cost
per reply extended to the 2002 study's top level by a fit, and pipetest's two token walks.

The extrapolation: for each backend that the host stops below the 2002 study's largest level (but not select,
which FD_SETSIZE stops for good), a least-squares line through the medians of server CPU per reply over its
measured levels, cost = a + b x dead connections, extended to that level. A line is the model of a mechanism
that scans every watched descriptor at each wait (poll: the cost per reply grows with the descriptors); for
one that does not (io_uring, aio-poll), the slope comes out near zero. Its residuals are stated beside it:
a curve the line does not fit shows there. The implied reply rate is 1e6 / cost: what one CPU (ephttpd is one
thread) could answer if the server's CPU were the only limit. Not measured: anything past the last level.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import catalog, model
from ..catalog import STRIDE, Series
from ..model import DEAD, PIPETEST
from .data import CPU_PER_REPLY, REFERENCE_KEY, Group, RunData, reference, reference_max
from .text import human, number

# The 2002 series whose value at the top level the extrapolation is set beside.
REFERENCE_POLL = "poll"
# Fewest measured levels a fit is drawn from.
MIN_FIT_POINTS = 3


@dataclass(frozen=True)
class Extrapolation:
    """A backend's server CPU per reply extended past the host's cap by a least-squares line."""

    variant: str
    series: Series
    xs: list[int]  # the measured levels the line is fitted to
    ys: list[float]  # their medians, µs per reply
    intercept: float  # µs per reply at 0
    slope: float  # µs per reply per dead connection
    to_x: int  # the level it is extended to (the 2002 study's largest)

    def at(self, x: float) -> float:
        return self.intercept + self.slope * x

    @property
    def residuals(self) -> list[float]:
        return [y - self.at(x) for x, y in zip(self.xs, self.ys, strict=True)]

    @property
    def value(self) -> float:
        return self.at(self.to_x)

    def text(self) -> str:
        residuals = ", ".join(f"{r:+.2f}".replace("-", "−") for r in self.residuals)
        implied = f", at most {human(1e6 / self.value)} replies/s on one CPU" if self.value > 0 else ""
        sign = "−" if self.slope < 0 else "+"
        return (f"{self.variant.upper()} {self.series.label}: {number(self.intercept, 2)} µs {sign} "
                f"{number(abs(self.slope) * 1000, 3)} µs per 1,000 dead connections (residuals {residuals} µs at "
                f"{', '.join(f'{x:,}' for x in self.xs)}): {number(self.value, 1)} µs per reply at "
                f"{self.to_x:,}{implied}.")


def extrapolation_texts(data: RunData) -> list[str]:
    """What the page says of the extrapolations: how they were made, the 2002 value, then one per line."""
    extended = extrapolations(data)
    if not extended:
        return []
    top = extended[0].to_x
    reference_rate = dict(reference()[REFERENCE_KEY[DEAD]]["series"].get(REFERENCE_POLL, [])).get(top)
    beside = (f" Beside it, 2002: {REFERENCE_POLL} on SMP answered {number(reference_rate, 1)} replies/s at "
              f"{top:,}." if reference_rate is not None else "")
    lines = ", ".join(dict.fromkeys(e.series.label for e in extended))
    intro = (f"{lines} stop at the host's cap; their server CPU per reply is extended to {top:,} dead "
             "connections by a least-squares line through each one's measured levels (dashed in the server CPU "
             "per reply figure; not measured), the residuals showing how well a line fits. The implied rate "
             "is 1,000,000 / that cost: what one CPU (ephttpd is one thread) could answer with nothing else "
             f"limiting it.{beside}")
    return [intro] + [e.text() for e in extended]


def _fit(xs: list[int], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0
    return mean_y - slope * mean_x, slope


def _stopped(line: list[Group]) -> bool:
    """Whether the host stopped this line: a level above its last measured one was skipped."""
    measured = [g.x for g in line if g.median(CPU_PER_REPLY.key) is not None]
    return bool(measured) and any(g.status == model.SKIPPED and g.x > max(measured) for g in line)


def extrapolations(data: RunData) -> list[Extrapolation]:
    """One per variant and line the host stopped below the 2002 study's largest level (select excepted:
    FD_SETSIZE stops it for good, whatever the host)."""
    if DEAD not in data.sweeps():
        return []
    top = reference_max(DEAD)
    found = []
    for variant in data.variants(DEAD):
        for series in data.lines(DEAD, variant):
            if catalog.backend(series.backend).fd_setsize_bound:
                continue
            line = data.line(DEAD, variant, series)
            groups = [g for g in line if g.median(CPU_PER_REPLY.key) is not None]
            if len(groups) < MIN_FIT_POINTS or not _stopped(line) or groups[-1].x >= top:
                continue
            xs = [g.x for g in groups]
            ys = [g.measured_median(CPU_PER_REPLY.key) for g in groups]
            intercept, slope = _fit(xs, ys)
            found.append(Extrapolation(variant, series, xs, ys, intercept, slope, top))
    return found


def holders_notes(data: RunData) -> list[str]:
    """The lines measured through helper processes, why, how, and the level measured both ways."""
    held = sorted({(p.series, p.dead_holders) for p in data.points if p.sweep == DEAD and p.dead_holders})
    if not held:
        return []
    fd_limit = data.record.limits.get("fd_hard_limit") or data.metadata.get("fd_hard_limit")
    counts = sorted({n for _, n in held})
    lines = ", ".join(dict.fromkeys(s.label for s, _ in held))
    cap = f"{fd_limit:,}" if isinstance(fd_limit, int) else "fewer"
    notes = [f"{lines}: dead connections held by {' or '.join(map(str, counts))} helper processes in the "
             f"server's epoll set, because this host caps a process at {cap} files (ephttpd --dead-holders, "
             "every level of these lines). deadconn opened them to the holders' own port, so active and dead "
             "connections never mixed; the server waited on one interest set of all of them beside the active "
             "connections, as the 2002 server did, while holding only its own descriptors."]
    for point in sorted(data.overlaps, key=lambda p: (p.variant, p.series, p.repetition)):
        through = data.groups.get((DEAD, point.variant, point.series, point.x))
        if through is None or not point.ok or through.median(CPU_PER_REPLY.key) is None:
            continue
        figures = point.figures
        if not isinstance(figures, model.DeadFigures):
            continue
        notes.append(
            f"{point.variant.upper()} {point.series.label} at {point.x:,} dead connections, measured both ways "
            f"(repetition {point.repetition}): through holders {human(through.measured_median('reply_rate'))} "
            f"replies/s and {number(through.measured_median(CPU_PER_REPLY.key), 2)} µs of server CPU per reply; "
            f"held by the server itself {human(figures.reply_rate)} replies/s and "
            f"{number(figures.server_cpu_us_per_reply, 2)} µs per reply.")
    return notes


def walks_note(data: RunData) -> str | None:
    """What pipetest's two token walks are, and what is known of the 2002 one."""
    if PIPETEST not in data.sweeps() or not any(s.walk == STRIDE for s in data.lines(PIPETEST)):
        return None
    return ("Pipetest ran two token walks. stay: each token keeps its own pipe, so the working set does not "
            "grow with the pipes. stride: each token moves 17 pipes on at every pass through all of them (pipe = "
            "(generation × 17 + token + token × pipes / tokens) mod pipes), the walk of Ben LaHaise's pipetest.c "
            "as its 2006 revision still carries it, there disabled under #if 0; the 2002 runs predate that "
            "revision, so they may have walked: which pattern the 2002 numbers measured is not known. Where 17 "
            "divides the pipe count the stride walk visits only a 17th of the pipes (pipes_visited in the "
            "points).")

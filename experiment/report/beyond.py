"""What a report says about going past the host's open-file cap: the dead connections held by
ephttpd's helper processes, the level measured both ways, the backends that stop at the cap and their cost
per reply extended to the 2002 study's top level by a fit, and pipetest's two token walks: each as one
sentence and a table for the page's notices, and the whole of how it was done for its method (EXTRAPOLATION_METHOD,
HOLDERS_METHOD, WALKS_METHOD).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import catalog, model
from ..catalog import STRIDE, Series
from ..model import DEAD, PIPETEST
from .data import CPU_PER_REPLY, REFERENCE_KEY, VARIANT_ORDER, Group, RunData, reference, reference_max
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

    def row(self) -> dict:
        """The fit as a row of the extrapolations' table: its line, a + b per 1,000 dead connections, the
        range of its residuals, its value at to_x and the rate that implies."""
        residuals = self.residuals
        sign = "−" if self.slope < 0 else "+"
        return {"line": f"{self.variant.upper()} {self.series.label}", "series": self.series,
                "fit": f"{number(self.intercept, 2)} {sign} {number(abs(self.slope) * 1000, 3)}",
                "residuals": f"{_signed(min(residuals))} to {_signed(max(residuals))}",
                "levels": ", ".join(f"{x:,}" for x in self.xs),
                "value": number(self.value, 1), "implied": human(1e6 / self.value) if self.value > 0 else "–"}


def _signed(value: float) -> str:
    return f"{value:+.2f}".replace("-", "−")


EXTRAPOLATION_METHOD = (
    "For each backend the host stops below the 2002 study's largest level (select excepted: FD_SETSIZE stops "
    "it for good, whatever the host), a least-squares line through the medians of its server CPU per reply at "
    "its measured levels, cost = a + b × dead connections, extended to that level; its residuals show how well "
    "a line fits. A line is the model of a mechanism that scans every watched descriptor at each wait (poll: "
    "the cost per reply grows with the descriptors); for one that does not (io_uring, aio-poll), the slope "
    "comes out near zero. The implied rate is 1,000,000 / that cost: what one CPU (ephttpd is one thread) "
    "could answer with nothing else limiting it. Nothing past a line's last measured level is measured.")


@dataclass(frozen=True)
class Extrapolated:
    """What the page says of the extrapolations: one sentence, then a row per line."""

    intro: str
    top: int  # the level the lines are extended to
    rows: list[dict]


def extrapolated(data: RunData) -> Extrapolated | None:
    extended = extrapolations(data)
    if not extended:
        return None
    top = extended[0].to_x
    reference_rate = dict(reference()[REFERENCE_KEY[DEAD]]["series"].get(REFERENCE_POLL, [])).get(top)
    beside = (f" Beside it, 2002: {REFERENCE_POLL} on SMP answered {number(reference_rate, 1)} replies/s at "
              f"{top:,}." if reference_rate is not None else "")
    lines = list(dict.fromkeys(e.series.label for e in extended))
    stops, its, each = ("stops", "its", "its") if len(lines) == 1 else ("stop", "their", "each one's")
    intro = (f"{', '.join(lines)} {stops} at the host's cap; {its} server CPU per reply is extended to {top:,} dead "
             f"connections by a least-squares line through {each} measured levels (dashed in the server CPU per "
             f"reply figure; not measured).{beside}")
    return Extrapolated(intro, top, [e.row() for e in extended])


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


HOLDERS_METHOD = (
    "A line whose top level is more dead connections than one process may open ran every level through "
    "ephttpd's helper processes (ephttpd --dead-holders), not only its upper levels, which would put a change of "
    "method inside one line. deadconn opened the dead connections to the holders' own port, so active and dead "
    "connections never mixed; the holders put them in the server's epoll set, so the server waited on one "
    "interest set of all of them beside the active connections, as the 2002 server did, while holding only its "
    "own descriptors. One level was measured once more with the server holding its dead connections itself, "
    "to show what the holders change.")


@dataclass(frozen=True)
class Holders:
    """What the page says of the lines measured through helper processes: one sentence, then a row per
    repetition of the level measured both ways."""

    intro: str
    rows: list[dict]


def holders(data: RunData) -> Holders | None:
    held = sorted({(p.series, p.dead_holders) for p in data.points if p.sweep == DEAD and p.dead_holders})
    if not held:
        return None
    fd_limit = data.record.limits.get("fd_hard_limit") or data.metadata.get("fd_hard_limit")
    counts = sorted({n for _, n in held})
    lines = list(dict.fromkeys(s.label for s, _ in held))
    cap = f"{fd_limit:,}" if isinstance(fd_limit, int) else "fewer"
    order = {v: n for n, v in enumerate(VARIANT_ORDER)}
    rows = [row for point in sorted(data.overlaps, key=lambda p: (order.get(p.variant, len(order)), p.variant,
                                                                 p.series, p.repetition))
            if (row := _both_ways(data, point))]
    intro = (f"{', '.join(lines)}: dead connections held by {' or '.join(map(str, counts))} helper processes in "
             f"the server's epoll set at every level, because this host caps a process at {cap} files.")
    return Holders(intro, rows)


def _both_ways(data: RunData, direct: model.Point) -> dict | None:
    """A row of the holders' table: one repetition at the level measured both ways, through the holders (that
    repetition's point on the line) and held by the server itself (its overlap point)."""
    group = data.groups.get((DEAD, direct.variant, direct.series, direct.x))
    through = next((p for p in group.ok if p.repetition == direct.repetition), None) if group else None
    if not direct.ok or through is None:
        return None
    cells = [_rate_and_cost(p) for p in (through, direct)]
    return {"variant": direct.variant.upper(), "series": direct.series, "x": f"{direct.x:,}",
            "repetition": direct.repetition, "through_rate": cells[0][0], "through_cpu": cells[0][1],
            "direct_rate": cells[1][0], "direct_cpu": cells[1][1]}


def _rate_and_cost(point: model.Point) -> tuple[str, str]:
    figures = point.figures
    if not isinstance(figures, model.DeadFigures):
        return "–", "–"
    return human(figures.reply_rate), number(figures.server_cpu_us_per_reply, 2)


WALKS_METHOD = (
    "Pipetest ran two token walks. stay: each token keeps its own pipe, so the working set does not grow with "
    "the pipes. stride: each token moves 17 pipes on at every pass through all of them (pipe = (generation × 17 "
    "+ token + token × pipes / tokens) mod pipes), the walk of Ben LaHaise's pipetest.c as its 2006 revision "
    "still carries it, there disabled under #if 0; the 2002 runs predate that revision, so they may have walked: "
    "which pattern the 2002 numbers measured is not known. Where 17 divides the pipe count the stride walk visits "
    "only a 17th of the pipes (pipes_visited in the points).")


def walks_note(data: RunData) -> str | None:
    """Pipetest's two token walks in one sentence (the whole of it: WALKS_METHOD)."""
    if PIPETEST not in data.sweeps() or not any(s.walk == STRIDE for s in data.lines(PIPETEST)):
        return None
    return ("Pipetest ran two token walks: stay (each token keeps its own pipe) and stride (each token moves 17 "
            "pipes on at every pass, as Ben LaHaise's pipetest.c can); which one the 2002 numbers measured is not "
            "known.")

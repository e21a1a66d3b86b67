"""The report's first screen: per variant, the figure that answers the study's question, one table of every
line at the level it reached, and at most three sentences saying which lines stayed flat and which collapsed.

The figure: the dead sweep's reply rate relative to 0 dead connections, with 2002 beside it; or, where the
client saturated at most of the variant's measured levels (there the reply rate is the client's limit, not
the server's), its server CPU per reply. A run without the dead sweep shows pipetest's rate relative to its
fewest pipes, or the open loop's p99. Every number is a median over the repetitions, as in the tables below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .. import catalog
from ..catalog import Series
from ..host import checks
from ..host.interference import THIRD_PARTY_SHARE, THIRD_PARTY_STRETCH_MS
from ..model import DEAD, DEAD_OPEN, PIPETEST
from .data import CPU_PER_REPLY, P99, PASSES, REPLY_RATE, VARIANT_ORDER, Group, Metric, RunData
from .draw import FigureFile
from .page import BREAK_FACTOR, open_headline
from .plots import figure_name
from .text import human, number, percent, times

# A line stayed flat when its cost per reply grew at most FLAT times (its rate kept at least 1/FLAT of itself),
# and collapsed when its cost grew COLLAPSED times or more (its rate fell to 1/COLLAPSED or less).
FLAT = 1.25
COLLAPSED = 2.0
# Above this share of a variant's measured dead levels with the client saturated, the figure is CPU per reply.
MOSTLY_SATURATED = 0.5

SUMMARY_METHOD = (
    "Each variant's figure is the dead sweep's reply rate divided by its own rate at 0 dead connections, beside "
    "the 2002 study's divided likewise; where the client saturated at more than half the variant's measured "
    "levels, its server CPU per reply instead, the cost that holds whether or not the client kept up. A line "
    f"stayed flat when its cost per reply grew at most {FLAT:g} times from its fewest dead connections (by the "
    f"reply rate: kept at least {1 / FLAT:.0%} of it), and collapsed when its cost grew {COLLAPSED:g} times or more "
    f"(its rate fell to {1 / COLLAPSED:.0%} or less); the numbers beside each say by how much.")

# The marks of the table, each explained once below it (in this order, those the table uses).
MARKS = {
    "h": "through helper processes (Helper processes, below)",
    "x": "the host stops the line here (Host limits, below)",
    "s": "client saturated: the rate is the client's limit",
    "o": "other load on the host",
    "i": f"third parties held the server's CPUs (over {THIRD_PARTY_SHARE:.0%} of them, or one over "
         f"{THIRD_PARTY_STRETCH_MS:g} ms at a stretch)",
    "t": "CPU throttled",
    "f": "CPU clock changed",
    "l": "generator lagged on 1% or more of its sends: enough to move p99 (open loop)",
    "v": "server overloaded (open loop)",
}
FLAG_MARKS = {checks.CLIENT_SATURATED: "s", checks.OTHER_LOAD: "o", checks.INTERFERED: "i", checks.CPU_THROTTLED: "t",
              checks.CPU_FREQUENCY_CHANGED: "f", checks.LAGGED_P99: "l", checks.OVERLOADED: "v"}
COLUMNS = {
    "reached": "dead reached",
    "rate": "replies/s",
    "share": "of 0-dead rate",
    "cpu": "CPU/reply [µs]",
    "p99": "p99 [ms], open loop",
    "pipes": "pipetest",  # with each walk's name when it ran more than one
}


@dataclass
class Cell:
    text: str = "–"
    marks: str = ""


@dataclass
class Row:
    series: Series
    cells: dict[str, Cell]


@dataclass
class VariantSummary:
    """One variant's part of the first screen."""

    variant: str
    title: str
    figure: str  # the name of the figure (plots.figure_name)
    figure_note: str  # why this figure
    columns: list[tuple[str, str]]  # (key, title) of the columns with a value in some row
    rows: list[Row]
    marks: list[tuple[str, str]]  # the marks the table uses, with their meaning
    prose: list[str]  # at most three sentences
    caption: str = ""
    file: FigureFile | None = field(default=None)  # set when the figures are drawn


def summaries(data: RunData, figures: set[str]) -> list[VariantSummary]:
    """Per variant that measured anything, in the usual order, given the names of the figures drawn."""
    variants = sorted({v for s in data.sweeps() for v in data.variants(s)},
                      key=lambda v: (VARIANT_ORDER.index(v) if v in VARIANT_ORDER else len(VARIANT_ORDER), v))
    found = []
    for variant in variants:
        chosen = key_figure(data, variant, figures)
        if chosen is None:
            continue
        rows = [Row(series, {**_dead_cells(data, variant, series), **_open_cell(data, variant, series),
                             **_pipes_cell(data, variant, series)}) for series in _rows(data, variant)]
        walks = list(dict.fromkeys(s.walk or catalog.STAY for s in data.lines(PIPETEST, variant)))
        titles = {**COLUMNS, "pipes": "pipetest, " + " / ".join(walks) if len(walks) > 1 else "pipetest"}
        columns = [(k, t) for k, t in titles.items() if any(r.cells.get(k, Cell()).text != "–" for r in rows)]
        used = "".join(c.marks for r in rows for c in r.cells.values())
        found.append(VariantSummary(
            variant=variant, title=_title(data, variant), figure=chosen[0], figure_note=chosen[1], columns=columns,
            rows=rows, marks=[(m, text) for m, text in MARKS.items() if m in used], prose=prose(data, variant),
            caption=_caption(columns)))
    return found


def _title(data: RunData, variant: str) -> str:
    cpus = {k: str(v) for k, v in (data.record.cpusets.get(variant) or {}).items() if v not in (None, "")}
    if "server" not in cpus:
        return variant.upper()
    several = any(c in cpus["server"] for c in ",-")
    return (f"{variant.upper()}: server on CPU{'s' if several else ''} {cpus['server']}"
            + (f", clients on {cpus['clients']}" if "clients" in cpus else ""))


def _caption(columns: list[tuple[str, str]]) -> str:
    keys = {k for k, _ in columns}
    parts = ["Medians over the repetitions" + (", at the most dead connections each line reached; CPU/reply: server "
                                               "CPU per reply" if "reached" in keys else "")]
    if "p99" in keys:
        parts.append("p99: the open loop at one offered rate (@: at its own last level, where that is another)")
    if "pipes" in keys:
        parts.append("pipetest: token passes/s at its most pipes as a share of its rate at its fewest (per token "
                     "walk where it ran more than one)")
    return ". ".join(parts) + "."


# ---------------------------------------------------------------------------------------------------------
# The figure

def key_figure(data: RunData, variant: str, figures: set[str]) -> tuple[str, str] | None:
    """The figure that answers the study's question for this variant, and why it is that one."""
    candidates = []
    if variant in data.variants(DEAD):
        saturated, measured = _saturated(data, variant)
        if saturated > MOSTLY_SATURATED * measured:
            candidates.append((figure_name(DEAD, CPU_PER_REPLY.slug, variant),
                               f"Server CPU per reply: the client saturated at {saturated} of the {measured} "
                               "levels measured, where the reply rate is the client's limit, not the server's."))
        candidates.append((figure_name(DEAD, "normalised", variant),
                           "Reply rate relative to 0 dead connections, with the 2002 study's beside it."))
    if variant in data.variants(PIPETEST):
        note = "Pipetest's token passes per second relative to its fewest pipes, with the 2002 study's."
        candidates += [(figure_name(PIPETEST, "normalised", variant), note),
                       (figure_name(PIPETEST, "normalised", f"{variant}-{catalog.WALKS[0]}"), note)]
    if variant in data.variants(DEAD_OPEN):
        candidates.append((figure_name(DEAD_OPEN, P99.slug, variant), "p99 latency of the open loop at one rate."))
    return next((c for c in candidates if c[0] in figures), None)


def _saturated(data: RunData, variant: str) -> tuple[int, int]:
    """Of the variant's dead levels (line and level) that measured a reply rate: how many with the client
    saturated, and how many."""
    groups = [g for g in data.all_groups(DEAD) if g.variant == variant and g.median(REPLY_RATE.key) is not None]
    return sum(g.flagged(checks.CLIENT_SATURATED) for g in groups), len(groups)


# ---------------------------------------------------------------------------------------------------------
# The table

def _rows(data: RunData, variant: str) -> list[Series]:
    """The dead sweep's lines (every server's), then any backend only pipetest ran (as ephttpd's), each on its
    kernel."""
    found = [s for sweep in (DEAD, DEAD_OPEN) for s in data.lines(sweep, variant)]
    found += [s.walking("") for s in data.lines(PIPETEST, variant)]
    return list(dict.fromkeys(found))


def _measured(data: RunData, sweep: str, variant: str, series: Series, key: str) -> list[Group]:
    return [g for g in data.line(sweep, variant, series) if g.median(key) is not None]


def _stopped(data: RunData, sweep: str, variant: str, series: Series, last: Group) -> bool:
    return any(g.status == "skipped" and g.x > last.x for g in data.line(sweep, variant, series))


def _flag_marks(group: Group) -> str:
    return "".join(mark for flag, mark in FLAG_MARKS.items() if group.flagged(flag))


def _dead_cells(data: RunData, variant: str, series: Series) -> dict[str, Cell]:
    groups = _measured(data, DEAD, variant, series, REPLY_RATE.key)
    if not groups:
        return {}
    base, top = groups[0], groups[-1]
    held = "h" if any(p.dead_holders for p in top.ok) else ""
    stopped = "x" if _stopped(data, DEAD, variant, series, top) else ""
    rate = top.measured_median(REPLY_RATE.key)
    return {"reached": Cell(f"{top.x:,}", held + stopped), "rate": Cell(human(rate), _flag_marks(top)),
            "share": Cell(percent(rate / base.measured_median(REPLY_RATE.key))),
            "cpu": Cell(number(top.median(CPU_PER_REPLY.key), 1))}


def _open_cell(data: RunData, variant: str, series: Series) -> dict[str, Cell]:
    groups = _measured(data, DEAD_OPEN, variant, series, P99.key)
    if not groups:
        return {}
    top = groups[-1]
    closed = _measured(data, DEAD, variant, series, REPLY_RATE.key)
    where = "" if closed and closed[-1].x == top.x else f" @ {human(top.x)}"
    stopped = "x" if _stopped(data, DEAD_OPEN, variant, series, top) and where else ""
    return {"p99": Cell(human(top.measured_median(P99.key)) + where, _flag_marks(top) + stopped)}


def _pipes_cell(data: RunData, variant: str, series: Series) -> dict[str, Cell]:
    """Pipetest's share at the line's most pipes, per walk ("103% / 57%": stay / stride); marked where the host
    stopped it below the most pipes another line reached (select at FD_SETSIZE)."""
    if series.server != catalog.DEFAULT_SERVER:
        return {}
    lines = [s for s in data.lines(PIPETEST, variant) if s.walking("") == series]
    if not lines:
        return {}
    most = max((g.x for s in data.lines(PIPETEST, variant) for g in _measured(data, PIPETEST, variant, s, PASSES.key)),
               default=0)
    shares, marks = [], ""
    for line in lines:
        groups = _measured(data, PIPETEST, variant, line, PASSES.key)
        if groups:
            shares.append(percent(groups[-1].measured_median(PASSES.key) / groups[0].measured_median(PASSES.key)))
            marks = "x" if groups[-1].x < most and _stopped(data, PIPETEST, variant, line, groups[-1]) else marks
    return {"pipes": Cell(" / ".join(shares) if shares else "n/a", marks)}


# ---------------------------------------------------------------------------------------------------------
# The sentences

@dataclass(frozen=True)
class _Measure:
    """What the sentences compare: a metric of a sweep, and which way is worse."""

    sweep: str
    metric: Metric
    higher_is_better: bool
    words: Callable[[float], str]  # a value in words: "161.8 µs of server CPU per reply"


CPU_WORDS = _Measure(DEAD, CPU_PER_REPLY, False, lambda v: f"{number(v, 1)} µs of server CPU per reply")
RATE_WORDS = _Measure(DEAD, REPLY_RATE, True, lambda v: f"{human(v)} replies/s")
PASSES_WORDS = _Measure(PIPETEST, PASSES, True, lambda v: f"{human(v)} token passes/s")


@dataclass(frozen=True)
class _Line:
    series: Series
    base: Group
    top: Group
    stopped: bool
    measure: _Measure

    @property
    def ratio(self) -> float:
        key = self.measure.metric.key
        return self.top.measured_median(key) / self.base.measured_median(key)

    @property
    def worse(self) -> float:
        """How many times worse than at its fewest: its cost's growth, or its rate's fall."""
        return 1 / self.ratio if self.measure.higher_is_better else self.ratio


def prose(data: RunData, variant: str) -> list[str]:
    """At most three sentences: the lines that stayed flat, those that collapsed, those in between."""
    measure = _measure(data, variant)
    if measure is None:
        return _open_prose(data, variant)
    lines = []
    for series in data.lines(measure.sweep, variant):
        groups = _measured(data, measure.sweep, variant, series, measure.metric.key)
        if len(groups) > 1:
            stopped = _stopped(data, measure.sweep, variant, series, groups[-1])
            lines.append(_Line(series, groups[0], groups[-1], stopped, measure))
    if not lines:
        return []
    flat = [line for line in lines if line.worse <= FLAT]
    collapsed = [line for line in lines if line.worse >= COLLAPSED]
    between = [line for line in lines if FLAT < line.worse < COLLAPSED]
    sentences = [_flat_sentence(flat, measure) if flat else "No line stayed flat."]
    if collapsed:
        sentences.append("Collapsed: " + "; ".join(_line_words(line) for line in collapsed) + ".")
    else:
        most = max(lines, key=lambda line: line.worse)
        sentences.append(f"None collapsed: the most any line worsened was {most.series.label}'s, "
                         f"{_relative(most)}.")
    if between:
        sentences.append("In between: " + "; ".join(_line_words(line) for line in between) + ".")
    return sentences


def _measure(data: RunData, variant: str) -> _Measure | None:
    """What the variant's figure shows, as the sentences compare it."""
    if variant in data.variants(DEAD):
        saturated, measured = _saturated(data, variant)
        return CPU_WORDS if saturated > MOSTLY_SATURATED * measured else RATE_WORDS
    return PASSES_WORDS if variant in data.variants(PIPETEST) else None


def _relative(line: _Line) -> str:
    base = f"{line.base.x:,}"
    if line.measure.higher_is_better:
        return f"{percent(line.ratio)} of its rate at {base}"
    return f"{times(line.ratio)} its cost at {base}"


def _line_words(line: _Line) -> str:
    """One line in a sentence: "poll, 161.8 µs of server CPU per reply at 19,500 (×17.55 its cost at 0; 5.5% of
    its 0-dead rate)"."""
    key = line.measure.metric.key
    text = f"{line.series.label}, {line.measure.words(line.top.measured_median(key))} at {line.top.x:,} " \
           f"({_relative(line)}"
    if line.measure is CPU_WORDS:
        rate = line.top.median(REPLY_RATE.key)
        base = line.base.median(REPLY_RATE.key)
        text += f"; {percent(rate / base)} of its {line.base.x:,}-dead rate" if rate and base else ""
    return text + ")"


def _flat_sentence(flat: list[_Line], measure: _Measure) -> str:
    """"Flat: epoll, epoll-et to 60,000 dead connections; select to 860, where the host stops it (…)"."""
    by_level: dict[tuple[int, bool], list[str]] = {}
    for line in sorted(flat, key=lambda line: (line.stopped, -line.top.x)):
        by_level.setdefault((line.top.x, line.stopped), []).append(line.series.label)
    unit = "dead connections" if measure.sweep == DEAD else "pipes"
    parts = []
    for n, ((x, stopped), labels) in enumerate(by_level.items()):
        where = f" to {x:,}" + (f" {unit}" if n == 0 else "")
        parts.append(", ".join(labels) + where + (f", where the host stops {'it' if len(labels) == 1 else 'them'}"
                                                  if stopped else ""))
    values = [line.top.measured_median(measure.metric.key) for line in flat]
    ratios = [line.ratio for line in flat]
    bases = {line.base.x for line in flat}
    at = f"at {bases.pop():,}" if len(bases) == 1 else "at the fewest"
    shown = percent if measure.higher_is_better else times
    their = "its" if len(flat) == 1 else "their"
    relative = _span(shown(min(ratios)), shown(max(ratios))) + (f" of {their} rate " if measure.higher_is_better
                                                                 else f" {their} cost ") + at
    return f"Flat: {'; '.join(parts)} ({_span(measure.words(min(values)), measure.words(max(values)))}, {relative})."


def _span(low: str, high: str) -> str:
    """"7.1 to 9.3 µs of server CPU per reply" from the two values in words, or one of them when they read alike."""
    return low if low == high else f"{low.split(' ', 1)[0]} to {high}"


def _open_prose(data: RunData, variant: str) -> list[str]:
    """A variant measured by the open loop alone: where each line's p99 broke, from its headline."""
    head = open_headline(data, variant)
    if head is None:
        return []
    held = [i for i in head.items if not i.broke]
    broke = [i for i in head.items if i.broke]
    sentences = []
    if held:
        sentences.append(f"p99 never exceeded {BREAK_FACTOR}× its value at its fewest dead connections: " + ", ".join(
            f"{i.series.label} up to {i.x:,} dead connections ({number(i.value, 2)} ms)" for i in held) + ".")
    if broke:
        sentences.append(f"p99 exceeded {BREAK_FACTOR}× its value at its fewest dead connections: " + ", ".join(
            f"{i.series.label} at {i.x:,} ({number(i.value, 2)} ms)" for i in broke) + ".")
    return sentences

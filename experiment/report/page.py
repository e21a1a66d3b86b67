"""What a report says in words and tables: headlines, notices, where the host stopped a sweep, the tables of
points and key numbers, the method and environment."""

from __future__ import annotations

import json
import shlex
import statistics
from collections import Counter
from dataclasses import dataclass, field

from .. import catalog, model
from ..catalog import Series
from ..host import checks
from ..host.interference import HOLDS, THIRD_PARTY_SHARE, THIRD_PARTY_STRETCH_MS
from ..model import DEAD, DEAD_OPEN, DEAD_SWEEPS, Point
from ..run.plan import Level, Line, dead_levels, planned
from .data import (
    CAVEATS,
    CPU_PER_REPLY,
    ERRORS,
    FLAG_TEXT,
    OPEN_CPU_PER_REPLY,
    P50,
    P99,
    REPLY_TIME,
    SWEEPS,
    Group,
    Metric,
    RunData,
    Sweep,
    reference_max,
)
from .text import human, number, percent, times

# ---------------------------------------------------------------------------------------------------------
# What the page says

@dataclass
class HeadlineItem:
    series: Series
    x: int
    value: float
    base_x: int
    base: float
    flags: list[str]
    capped: bool  # the host stopped this backend below the level the others reached
    broke: bool | None = None  # open loop: whether p99 exceeded BREAK_FACTOR x its base at x (else: never, up to x)
    # Open loop, the same without the third parties' stretches (model.Tail.kept): where p99 first exceeded
    # BREAK_FACTOR x its base (else its last level with one), and what the break can be put down to (CAUSES).
    kept: Break | None = None
    cause: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.base if self.base else None


@dataclass(frozen=True)
class Break:
    """Where a line's p99 first exceeded BREAK_FACTOR x its value at its first level (broke), else its last."""

    x: int
    value: float
    base: float
    broke: bool


@dataclass
class Headline:
    sweep: str
    variant: str
    x: int | None
    items: list[HeadlineItem]
    without_data: dict[Series, str]  # why it has no measured point
    text: str


@dataclass
class _Lines:
    """The lines of one sweep and variant as a headline reads them."""

    measured: dict[Series, dict[int, Group]] = field(default_factory=dict)  # by level, where key was measured
    attempted: dict[Series, int] = field(default_factory=dict)  # each measured line's largest level not skipped
    capped: set[Series] = field(default_factory=set)  # a level above that one was skipped: the host stopped it
    without_data: dict[Series, str] = field(default_factory=dict)  # run, but nothing measured: why


def _first_reason(groups: list[Group]) -> str:
    reasons = [p.reason for g in groups for p in g.points if p.reason]
    return str(reasons[0]) if reasons else "no measured point"


def _lines(data: RunData, sweep_name: str, variant: str, key: str) -> _Lines:
    """A line whose every point was skipped is left out: the sweep does not apply to it (the method says
    why, not_applicable)."""
    found = _Lines()
    for backend in data.lines(sweep_name, variant):
        series = data.line(sweep_name, variant, backend)
        groups = {g.x: g for g in series if g.median(key) is not None}
        if not groups:
            if any(g.status != model.SKIPPED for g in series):
                found.without_data[backend] = _first_reason(series)
            continue
        found.measured[backend] = groups
        found.attempted[backend] = max(g.x for g in series if g.status != model.SKIPPED)
        if any(g.status == model.SKIPPED and g.x > found.attempted[backend] for g in series):
            found.capped.add(backend)
    return found


def headline(data: RunData, sweep_name: str, variant: str) -> Headline | None:
    """The main metric of each backend at the largest x every backend measured, relative to its smallest x.

    A backend the host stops earlier than the rest (select at FD_SETSIZE: its higher levels are skipped)
    would pull that level down for all: it is quoted at its own last level instead, and said to stop there.
    """
    if sweep_name == DEAD_OPEN:
        return open_headline(data, variant)
    sweep = SWEEPS[sweep_name]
    key = sweep.main.key
    lines = _lines(data, sweep_name, variant, key)
    if not lines.measured:
        return None
    top = max(lines.attempted.values())
    full = [b for b in lines.measured if lines.attempted[b] == top or b not in lines.capped]
    common = set.intersection(*(set(lines.measured[b]) for b in full))
    if not common:
        return None
    x = max(common)
    items = []
    for backend, groups in lines.measured.items():
        group = groups[x if backend in full else max(groups)]
        base_x = min(groups)
        items.append(HeadlineItem(series=backend, x=group.x, value=group.measured_median(key), base_x=base_x,
                                  base=groups[base_x].measured_median(key), capped=backend not in full,
                                  flags=[FLAG_TEXT[name] for name in CAVEATS if group.flagged(name)]))
    text = _headline_text(sweep, variant, x, items, lines.without_data)
    return Headline(sweep_name, variant, x, items, lines.without_data, text)


def not_applicable(data: RunData) -> list[dict]:
    """The lines of a sweep that has no point to measure for them (every point skipped before it ran, such as
    pipetest for a backend of ephttpd's own): once per sweep and reason, with the lines it names."""
    found: dict[tuple[str, str], list[str]] = {}
    for sweep_name in data.sweeps():
        for backend in data.lines(sweep_name):
            groups = [g for v in data.variants(sweep_name) for g in data.line(sweep_name, v, backend)]
            if groups and all(g.status == model.SKIPPED for g in groups):
                labels = found.setdefault((sweep_name, _first_reason(groups)), [])
                labels += [] if backend.label in labels else [backend.label]
    return [{"sweep": sweep_name, "lines": ", ".join(labels), "reason": reason}
            for (sweep_name, reason), labels in found.items()]


def _headline_text(sweep: Sweep, variant: str, x: int, items: list[HeadlineItem],
                   without_data: dict[Series, str]) -> str:
    def relative(item: HeadlineItem, first: bool) -> str:
        share = percent(item.ratio)
        if first or item.base_x != items[0].base_x:
            share += f" of its {item.base_x:,}-{sweep.base_word} rate"
        return "(" + ", ".join([share, *item.flags]) + ")"

    full = [i for i in items if not i.capped]
    parts = []
    for n, item in enumerate(full):
        if n == 0:
            parts.append(f"{item.series.label} {sweep.verb} {human(item.value)} {sweep.main.unit} "
                         f"{relative(item, True)}")
        else:
            parts.append(f"{item.series.label} {human(item.value)}/s {relative(item, False)}")
    text = f"{variant.upper()}: at {x:,} {sweep.x_unit} " + "; ".join(parts) + "."
    for item in (i for i in items if i.capped):
        text += (f" {item.series.label} stops at {item.x:,} {sweep.x_unit}: {human(item.value)}/s there "
                 f"{relative(item, False)}.")
    for backend, why in without_data.items():
        text += f" {backend.label}: nothing measured ({why})."
    return text


# The open loop's headline: where a line's p99 first exceeds this many times its value at its fewest dead.
BREAK_FACTOR = 10
# The generator is named only where its late sends could have moved the headline's percentile, p99.
OPEN_CAVEATS = (*CAVEATS, checks.LAGGED_P99, checks.OVERLOADED)


def open_headline(data: RunData, variant: str) -> Headline | None:
    """For each line of the open-loop sweep, the dead count at which its p99 first exceeded BREAK_FACTOR times
    its value at its fewest dead connections (ideally 0), or that it never did up to its last measured level."""
    lines = _lines(data, DEAD_OPEN, variant, P99.key)
    items = [_open_item(series, [groups[x] for x in sorted(groups)]) for series, groups in lines.measured.items()]
    if not items:
        return None
    offered = [g.median("offered_rate") for line in data.lines(DEAD_OPEN, variant)
               for g in data.line(DEAD_OPEN, variant, line) if g.median("offered_rate")]
    rate = f" at {human(offered[0])} requests/s" if offered else ""
    text = f"{variant.upper()}, open loop{rate}: " + "; ".join(_open_part(item) for item in items) + "."
    for line, why in lines.without_data.items():
        text += f" {line.label}: nothing measured ({why})."
    return Headline(DEAD_OPEN, variant, max(i.x for i in items), items, lines.without_data, text)


def _open_item(series: Series, groups: list[Group]) -> HeadlineItem:
    """A line's first level whose p99 exceeded BREAK_FACTOR x its first level's, else its last level; the same
    without the third parties' stretches, and the break's cause."""
    raw = _break([(g.x, g.measured_median(P99.key)) for g in groups])
    assert raw is not None
    at = next(g for g in groups if g.x == raw.x)
    kept = _break([(g.x, v) for g in groups if (v := g.kept_p99()) is not None])
    return HeadlineItem(series=series, x=raw.x, value=raw.value, base_x=groups[0].x, base=raw.base,
                        flags=[FLAG_TEXT[n] for n in OPEN_CAVEATS if at.flagged(n)], capped=False,
                        broke=raw.broke, kept=kept, cause=_cause(at, raw, kept) if raw.broke else "")


def _break(p99s: list[tuple[int, float]]) -> Break | None:
    """Where p99 (by level, in order) first exceeded BREAK_FACTOR x its first value, else its last."""
    if not p99s:
        return None
    base = p99s[0][1]
    x, value = next(((x, v) for x, v in p99s[1:] if v > BREAK_FACTOR * base), p99s[-1])
    return Break(x, value, base, value > BREAK_FACTOR * base and x != p99s[0][0])


# What an open-loop break can be put down to, in the order they are tried (_cause).
CAUSE_GENERATOR, CAUSE_THIRD_PARTY, CAUSE_SERVER, CAUSE_UNKNOWN = ("the generator", "a third party",
                                                                  "the server's CPU busy", "not attributed")


def _cause(at: Group, raw: Break, kept: Break | None) -> str:
    """The generator where most repetitions lagged for p99; a third party where most were interfered and the
    break is gone without its stretches; the server's CPU where it was busy over SATURATED_FRACTION of its
    cpuset (or could not keep up); else not attributed."""
    if at.mostly_flagged(checks.LAGGED_P99):
        return CAUSE_GENERATOR
    if at.mostly_flagged(checks.INTERFERED) and kept is not None and not (kept.broke and kept.x <= raw.x):
        return CAUSE_THIRD_PARTY
    busy = at.median("server_cpu_busy_pct")
    if at.mostly_flagged(checks.OVERLOADED) or (busy is not None and busy >= 100 * checks.SATURATED_FRACTION):
        return CAUSE_SERVER
    return CAUSE_UNKNOWN


def _open_part(item: HeadlineItem) -> str:
    flags = f"; {', '.join(item.flags)}" if item.flags else ""
    if item.broke:
        text = (f"{item.series.label}'s p99 first exceeded {BREAK_FACTOR}× its {item.base_x:,}-dead value "
                f"({number(item.base, 2)} ms) at {item.x:,} dead connections ({number(item.value, 2)} ms{flags})")
    else:
        text = (f"{item.series.label}'s p99 never exceeded {BREAK_FACTOR}× its {item.base_x:,}-dead value "
                f"({number(item.base, 2)} ms) up to {item.x:,} dead connections ({number(item.value, 2)} ms, "
                f"{times(item.ratio)}{flags})")
    if item.kept is not None:
        kept = item.kept
        text += (f", without third parties' stretches at {kept.x:,} ({number(kept.value, 2)} ms)" if kept.broke
                 else f", without third parties' stretches never up to {kept.x:,} ({times(kept.value / kept.base)})"
                 if kept.base else "")
    return text + (f": {item.cause}" if item.cause else "")


def headlines(data: RunData) -> list[Headline]:
    return [h for s in data.sweeps() if s in SWEEPS for v in data.variants(s)
            if (h := headline(data, s, v)) is not None]


def _caps(data: RunData, sweep_name: str) -> dict[Series, int]:
    """The most each line of the sweep reached under the host's limits (run.json's limits, by label), or, in an
    older record without limits, the largest level each line ran: empty when nothing stopped short of the plan."""
    sweep = SWEEPS[sweep_name]
    skipped = [g for g in data.all_groups(sweep_name) if g.status == model.SKIPPED]
    lines = {s.label: s for s in data.lines(sweep_name)}
    caps = {lines[b]: int(v) for b, v in (data.record.limits.get(sweep.limit) or {}).items() if b in lines}
    planned = max(data.plan.levels(sweep_name), default=0)
    if not skipped and not any(v < planned for v in caps.values()):
        return {}
    return caps or {b: max((g.x for v in data.variants(sweep_name) for g in data.line(sweep_name, v, b)
                            if g.status != model.SKIPPED), default=0) for b in data.lines(sweep_name)}


def _capped_sweeps(data: RunData) -> list[str]:
    return [s for s in SWEEPS if s in data.sweeps() and _caps(data, s)]


def host_caps(data: RunData) -> list[str]:
    """Where the host stopped a sweep short of its plan or of the 2002 study, in one sentence each (the lines
    it stopped earlier than the others: host_limit_rows)."""
    fd_limit = data.record.limits.get("fd_hard_limit") or data.metadata.get("fd_hard_limit")
    sentences = []
    for sweep_name in _capped_sweeps(data):
        if sweep_name == DEAD_OPEN and DEAD in data.sweeps():
            continue  # the open loop's dead connections stop where the closed loop's do: said once
        caps = _caps(data, sweep_name)
        top = max(caps.values())
        host = f"This host allows {fd_limit} open files per process: " if fd_limit else ""
        what = f"dead connections stop at {top:,} per server" if sweep_name in DEAD_SWEEPS else \
            f"pipetest stops at {top:,} pipes"
        held = [s for s in data.lines(DEAD) if s.label in (data.record.limits.get("dead_holders") or {})] \
            if sweep_name == DEAD else []
        if held:  # helper processes held the dead connections of these lines past the cap
            alone = [v for b, v in caps.items() if b not in held]
            what = (f"one server process holds at most {max(alone, default=top):,} dead connections; "
                    f"{', '.join(b.label for b in held)} reached {max(caps[b] for b in held):,} through helper "
                    "processes")
        sentences.append(f"{host}{what} (the 2002 study went to {reference_max(sweep_name):,}).")
    return sentences


def _stopped_lines(data: RunData, sweep_name: str) -> list[tuple[Series, int, str]]:
    """The sweep's lines the host stopped short of the plan: (line, the most it reached, why: the recorded
    reason of its first level skipped). A line the sweep does not apply to (not_applicable) is left out, and an
    open-loop line that stops where its closed-loop line does."""
    caps = _caps(data, sweep_name)
    closed = _caps(data, DEAD) if sweep_name == DEAD_OPEN else {}
    planned = max(data.plan.levels(sweep_name), default=0)
    found = []
    for line, cap in caps.items():
        groups = [g for v in data.variants(sweep_name) for g in data.line(sweep_name, v, line)]
        if cap >= planned or all(g.status == model.SKIPPED for g in groups) or closed.get(line) == cap:
            continue
        reasons = [p.reason for g in groups if g.status == model.SKIPPED and g.x > cap for p in g.points if p.reason]
        found.append((line, cap, str(reasons[0]) if reasons else ""))
    return found


def host_limit_rows(data: RunData) -> list[dict]:
    """The host's limits as one table: per sweep, the lines stopped at the same level for the same reason, one
    row each; the reason up to its first ";", the rest in the method (limit_reasons)."""
    rows: dict[tuple[str, int, str], dict] = {}
    for sweep_name in _capped_sweeps(data):
        for line, cap, reason in _stopped_lines(data, sweep_name):
            short = reason.split(";")[0]
            row = rows.setdefault((sweep_name, cap, short), {
                "sweep": sweep_name, "lines": [], "at": f"{cap:,} {SWEEPS[sweep_name].x_unit}", "why": short or "–",
                "more": False})
            row["lines"] += [] if line.label in row["lines"] else [line.label]
            row["more"] = row["more"] or short != reason
    return [{**row, "lines": ", ".join(row["lines"])} for row in rows.values()]


def limit_reasons(data: RunData) -> list[dict]:
    """The whole recorded reason of each stopped line whose table row shows only its first part."""
    return [{"sweep": s, "line": line.label, "reason": reason} for s in _capped_sweeps(data)
            for line, _, reason in _stopped_lines(data, s) if reason.split(";")[0] != reason]


# The notices of the checks' flags: {n} points flagged ({points}: "1 point", "6 points"), of {ok} measured points,
# of {open} open-loop points.
FLAG_NOTICES = {
    checks.CLIENT_SATURATED: "At {n} of {ok} measured points the client saturated (ringed in the reply-rate figures): "
                             "there the reply rate is the client's limit, not the server's. Server CPU per reply "
                             "still measures the server's cost per reply.",
    checks.OTHER_LOAD: "At {points} other load ran on the host during the measurement.",
    checks.INTERFERED: f"At {{points}} third parties (tasks neither the run's, its engine's nor its instruments') "
                       f"took more than {THIRD_PARTY_SHARE:.0%} of the server's CPUs, or held one of them longer "
                       f"than {THIRD_PARTY_STRETCH_MS:g} ms at a stretch, while the point was measured: each "
                       "point names them, with their time and longest stretch (interference).",
    checks.CPU_THROTTLED: "At {points} the server's or the client's cgroup was throttled during the measurement: "
                          "its CPU quota, not the mechanism, limited it.",
    checks.CPU_FREQUENCY_CHANGED: f"At {{points}} the CPU clock moved by more than "
                                  f"{checks.FREQUENCY_CHANGE_FRACTION:.0%} during the measurement.",
    checks.OVERLOADED: "At {n} of {open} open-loop points the server did not keep up with the offered rate "
                       "(overloaded: the achieved rate fell more than 1% below it): there the latency grows with "
                       "the queue, and requests past openload's timeout are errors, not latencies.",
    checks.LAGGED_P99: "At {n} of {open} open-loop points the generator lagged on 1% or more of its sends: openload "
                       "sent them later than 1 ms after they were due although their connection was free (its CPU "
                       "was taken or it was descheduled), enough to have moved p99 and p99.9 there.",
    checks.LAGGED_P999: "At {n} of {open} open-loop points the generator lagged on 0.1% or more of its sends: enough "
                        "to have moved p99.9 there.",
}


def notices(data: RunData) -> list[str]:
    """What a reader must know before reading the numbers: incomplete run, failures, flagged points."""
    found = []
    status = data.record.status
    if status != "complete":
        found.append(f"This run's status is {status!s}: it did not finish, so points may be missing.")
    if data.record.error:
        found.append(f"The run stopped with an error: {data.record.error}")
    missing = missing_levels(data)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        found.append(f"{len(missing)} planned point{'s have' if len(missing) > 1 else ' has'} no result: {shown}.")
    failed = [p for p in data.points if p.status == model.FAILED]
    if failed:
        reasons = Counter(p.reason or "no reason recorded" for p in failed)
        found.append(f"{len(failed)} point{'s' if len(failed) > 1 else ''} failed: "
                     + "; ".join(f"{r} (×{n})" if n > 1 else r for r, n in reasons.most_common()) + ".")
    ok = [p for p in data.points if p.ok]
    flagged = Counter(name for p in ok for name, on in p.flags.items() if on)
    counts = {"ok": len(ok), "open": sum(p.sweep == DEAD_OPEN for p in ok)}
    found += [text.format(n=flagged[name], points=f"{flagged[name]} point{'s' if flagged[name] > 1 else ''}", **counts)
              for name, text in FLAG_NOTICES.items() if flagged.get(name)]
    found += _lag_unjudged(ok, counts["open"])
    if (data.metadata.get("git") or {}).get("dirty"):
        found.append("The source tree had uncommitted changes when this run started (git dirty).")
    return found


def _lag_unjudged(ok: list[Point], open_points: int) -> list[str]:
    """The open-loop points with late sends measured before openload said which percentiles they could move."""
    late = [p for p in ok if p.flags.get(checks.LAGGED) and isinstance(p.figures, model.OpenFigures)
            and p.figures.lagged_p99 is None]
    if not late:
        return []
    return [f"At {len(late)} of {open_points} open-loop points openload sent requests late, but these points "
            "predate its judgement of whether enough were late to move p99 or p99.9: this report neither puts "
            "their tail down to the generator nor clears it."]


def preflight_notes(data: RunData) -> list[str]:
    """The host settings the preflight found below what the plan needs, one short sentence each (why each
    matters: the method's preflight)."""
    return [f"Preflight: {f.get('setting')} was {f.get('value')}, the plan needs {f.get('needed')}"
            + (" (changed for this run by --tune-host)." if _tuned(data, f) else ".")
            for f in data.record.preflight if isinstance(f, dict)]


def _tuned(data: RunData, finding: dict) -> bool:
    """Whether --tune-host raised this setting for the run (record "tuned": [{"setting", "old", "new"}])."""
    tuned = data.record.tuned or data.metadata.get("tuned") or []
    settings = set(tuned) if isinstance(tuned, dict) else {t.get("setting") for t in tuned if isinstance(t, dict)}
    return finding.get("setting") in settings


def fd_limit(data: RunData) -> int | None:
    """The server's open-file limit the run planned under (run.json's limits, or its metadata before limits)."""
    value = data.record.limits.get("fd_hard_limit") or data.metadata.get("fd_hard_limit")
    return value if isinstance(value, int) else None


def planned_levels(data: RunData) -> list[tuple[Line, Level]]:
    """Every (line, level) the run planned: plan.planned() under the run's fd limit. A run recorded before
    helper processes held dead connections (its limits name no dead_holders) ran every line on one process,
    so its lines have the levels one process may hold."""
    limit = fd_limit(data)
    if limit is None:
        return []
    held = data.record.limits.get("dead_holders")
    found = []
    for line in planned(data.plan, limit):
        levels = line.levels
        if line.holders and held is None:
            levels = tuple(dead_levels(data.plan, limit, line.series.backend))
        found += [(line, level) for level in levels]
    return found


def missing_levels(data: RunData) -> list[str]:
    """The planned points (planned_levels) with no point file, by sweep, variant, line and level (and
    repetition when the plan repeats)."""
    recorded = {(p.sweep, p.variant, p.series, p.x, p.repetition, p.overlap) for p in data.points}
    missing = []
    for line, level in planned_levels(data):
        if (line.sweep, line.variant, line.series, level.value, line.repetition, level.overlap) not in recorded:
            missing.append(f"{line.sweep} {line.variant.upper()} {line.series.label} {level.value:,}"
                           + (" direct" if level.overlap else "")
                           + (f" r{line.repetition}" if data.plan.repeat > 1 else ""))
    return missing


# ---------------------------------------------------------------------------------------------------------
# Tables

def _value_cell(group: Group, metric: Metric) -> str:
    return number(group.median(metric.key), metric.digits)


def _range_cell(group: Group, metric: Metric) -> str:
    low, high = group.low(metric.key), group.high(metric.key)
    if low is None or len(group.values(metric.key)) < 2:
        return ""
    return f"{number(low, metric.digits)} – {number(high, metric.digits)}"


def points_table(data: RunData, sweep_name: str) -> dict:
    """Every group of repetitions; a group with no success carries its reasons instead of numbers."""
    sweep = SWEEPS[sweep_name]
    columns = ["variant", "backend", sweep.x_label, "ok / runs"]
    dead = sweep_name in DEAD_SWEEPS
    metrics = (P99, P50, *sweep.metrics[1:]) if sweep_name == DEAD_OPEN else sweep.metrics
    if dead:
        columns += ["load", "bottleneck"]
    for metric in metrics:
        columns += [f"{metric.title} (median)", "min – max"]
    if dead:
        columns.append(ERRORS.key)
    watched = any(g.server_interference() for g in data.all_groups(sweep_name))
    if watched:
        columns += OTHERS_COLUMNS + ([KEPT_P99_COLUMN] if sweep_name == DEAD_OPEN else [])
    columns += ["flags", "notes"]
    rows = []
    for group in data.all_groups(sweep_name):
        values = []
        for metric in metrics:
            values += [_value_cell(group, metric), _range_cell(group, metric)]
        if dead:
            values.append(number(group.total(ERRORS.key)))
        if watched:
            values += _others_cells(group) + ([_kept_p99_cell(group)] if sweep_name == DEAD_OPEN else [])
        rows.append({"variant": group.variant.upper(), "backend": group.series,
                     "x": f"{group.x:,}" + (" (host max)" if group.host_max else ""),
                     "runs": f"{len(group.ok)} / {len(group.points)}", "values": values,
                     "about": [group.loads, group.bottleneck] if dead else [],
                     "flags": ", ".join(group.flags), "status": group.status, "reasons": group.reasons})
    return {"sweep": sweep_name, "title": sweep.title, "columns": columns, "rows": rows,
            "value_columns": len(columns) - 6 - (2 if dead else 0)}


# Who else held the server's CPUs while a group's repetitions were measured (run/neighbours.py).
OTHERS_COLUMNS = ["others' share of the server's CPUs (median)", "others' longest holds"]
KEPT_P99_COLUMN = "p99 without others' stretches (median) [ms]"


def _others_cells(group: Group) -> list[str]:
    """Third parties' median share of the server's CPUs, and the longest stretch one held there, whose."""
    found = group.server_interference()
    if not found:
        return ["–", "–"]
    share = statistics.median(f.third_party_share for f in found)
    holds = sorted((h for f in found for h in (f.holds or ([f.longest] if f.longest else []))),
                   key=lambda h: -h.ms)[:HOLDS]
    return [percent(share), ", ".join(f"{number(h.ms, 2)} ms ({h.comm})" for h in holds) or "–"]


def _kept_p99_cell(group: Group) -> str:
    kept = group.kept_p99()
    return number(kept, 2) if kept is not None else "–"


def key_table(data: RunData, heads: list[Headline]) -> list[dict]:
    rows = []
    for head in heads:
        sweep = SWEEPS[head.sweep]
        for item in head.items:
            group = data.groups[(head.sweep, head.variant, item.series, item.x)]
            if head.sweep == DEAD_OPEN:
                rows.append(_open_key_row(head, item, group))
                continue
            rows.append({
                "sweep": head.sweep, "variant": head.variant.upper(), "backend": item.series,
                "x": f"{item.x:,} {sweep.x_unit}", "value": f"{human(item.value)} {sweep.main.unit}",
                "relative": f"{percent(item.ratio)} of {item.base_x:,}-{sweep.base_word}",
                "cpu": _value_cell(group, CPU_PER_REPLY) if head.sweep == DEAD else "",
                "time": _value_cell(group, REPLY_TIME) if head.sweep == DEAD else "",
                "flags": ", ".join(item.flags + (["host stops it here"] if item.capped else []))})
    return rows


def _open_key_row(head: Headline, item: HeadlineItem, group: Group) -> dict:
    """An open-loop line in the key numbers: its p99 where it broke (or at its last level), against its base."""
    where = "p99 over 10× here" if item.broke else "p99 never over 10×"
    return {"sweep": head.sweep, "variant": head.variant.upper(), "backend": item.series,
            "x": f"{item.x:,} dead connections", "value": f"p99 {number(item.value, 2)} ms",
            "relative": f"{times(item.ratio)} of {item.base_x:,}-dead p99",
            "cpu": _value_cell(group, OPEN_CPU_PER_REPLY), "time": f"p50 {_value_cell(group, P50)}",
            "flags": ", ".join([where, *item.flags])}


def flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as (dotted key, text) rows; lists of scalars stay on one row."""
    if isinstance(value, dict):
        rows = []
        for key, item in value.items():
            rows += flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return rows or [(prefix, "{}")]
    if isinstance(value, tuple):  # the plan's dataclass fields (model.Plan) are tuples
        value = list(value)
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        rows = []
        for n, item in enumerate(value):
            rows += flatten(item, f"{prefix}[{n}]")
        return rows
    if isinstance(value, list):
        return [(prefix, ", ".join(str(v) for v in value) if value else "[]")]
    return [(prefix, "–" if value is None else json.dumps(value) if isinstance(value, bool) else str(value))]


def _command(part: dict | None) -> str:
    command = (part or {}).get("command")
    if isinstance(command, list):
        return shlex.join(str(c) for c in command)
    return str(command) if command else ""


def point_commands(point: Point) -> list[dict]:
    """The programs of one point: their cpuset, container and exact command line."""
    found = []
    for part in model.PROGRAMS:
        section = point.programs.get(part)
        if section and section.get("command"):
            kind = catalog.SERVERS.get(section.get("kind") or catalog.DEFAULT_SERVER)
            program = kind.program if kind else section.get("kind")
            found.append({"program": program if part == "server" else part,
                          "cpuset": str(section.get("cpuset") or ""),
                          "container": str(section.get("container") or ""),
                          "command": _command(section)})
    return found


ENGINE_COLUMNS = ("url", "hostname", "kernel", "cpu_model", "cpus", "fd_hard_limit", "docker_version")


def engines_table(meta: dict) -> list[dict]:
    """The engines the server and the clients ran on, one row each; empty for runs from before engines."""
    engines = meta.get("engines") or {}
    return [{"role": role, **{k: "–" if engines[role].get(k) is None else str(engines[role][k])
                              for k in ENGINE_COLUMNS}}
            for role in ("server", "client") if isinstance(engines.get(role), dict)]


def method(data: RunData) -> dict:
    examples = {}
    for sweep_name in data.sweeps():
        point = next((p for g in data.all_groups(sweep_name) for p in g.ok if point_commands(p)), None)
        if point:
            examples[sweep_name] = {"id": point.id, "commands": point_commands(point)}
    limits = data.record.limits
    return {
        "examples": examples,
        "limit_reasons": limit_reasons(data),
        "not_applicable": not_applicable(data),
        "preflight": [{"setting": str(f.get("setting")), "why": str(f.get("why"))}
                      for f in data.record.preflight if isinstance(f, dict)],
        "cpusets": [{"variant": v.upper(), **{k: str(x) for k, x in (c or {}).items()}}
                    for v, c in data.record.cpusets.items()],
        "limits": flatten(limits) if limits else [],
        "plan": flatten({**data.plan.to_dict(), "series": [s.label for s in data.planned_lines(DEAD)]}),
        "points": [{"id": p.id, "status": p.status, "reason": p.reason or "", "started_at": p.started_at,
                    "commands": point_commands(p)}
                   for g in data.ordered_groups() for p in g.points],
    }

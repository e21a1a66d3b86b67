"""The Kernels section of a run over several kernels (--kernels): the kernels as their guests recorded them, and
each line's median at each level on each kernel with its ratio to the first kernel's (the first of --kernels),
called a change only by compare's rule (verdict.py), which also decides the section's one-sentence headline.

The numbers are each sweep's main metric, the one its headlines quote: reply rate, token passes per second, the
open loop's p99; and for the dead sweeps server CPU per reply too, which measures the server where the client
saturated (as in a guest of two vCPUs it mostly does) and the reply rate is the client's limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..catalog import Series, kernel_name
from .data import CPU_PER_REPLY, OPEN_CPU_PER_REPLY, SWEEPS, Group, Metric, RunData, Sweep
from .styles import kernel_dash
from .text import human, number, times
from .verdict import NOISE, ComparedPoint

# The largest changes the headline names per kernel and sweep.
NAMED = 3
# Compared beside each sweep's main metric: the server's cost per reply, which the client's limit does not cap.
ALSO_COMPARED = {CPU_PER_REPLY.sweep: CPU_PER_REPLY, OPEN_CPU_PER_REPLY.sweep: OPEN_CPU_PER_REPLY}


def compared_metrics(sweep: Sweep) -> list[Metric]:
    """The metrics the section compares the kernels by, for a sweep: its main one, and its CPU per reply."""
    return [sweep.main] + ([ALSO_COMPARED[sweep.name]] if sweep.name in ALSO_COMPARED else [])


@dataclass
class Cell:
    """One kernel's median at a level, and against the first kernel's: its ratio and what the rule says."""

    median: str
    ratio: str = ""
    change: bool = False
    rule: str = ""


@dataclass
class Row:
    variant: str
    series: Series  # the line with no kernel: its lines on the kernels are the row's cells
    x: str
    cells: list[Cell]


@dataclass
class Table:
    title: str
    metric: str  # the medians' metric and unit
    x_label: str
    rows: list[Row]


@dataclass
class Section:
    headline: str
    kernels: list[str]
    facts: list[dict]  # one row per kernel: what its guests recorded
    reasons: list[str]  # why each accelerator was taken
    dashes: list[str]  # each kernel's dash pattern in the figures: "6.1 solid"
    tables: list[Table]
    rule: str


def section(data: RunData) -> Section | None:
    """The run's Kernels section; None for a run on the host's own kernel."""
    kernels = [k for k in data.kernels() if k]
    if not kernels:
        return None
    tables = [_table(data, s, metric, kernels) for s in data.sweeps() if s in SWEEPS
              for metric in compared_metrics(SWEEPS[s])]
    guests = {k: _guests(data, k) for k in kernels}
    reasons = sorted({f"{g['accelerator']}: {g['accelerator_reason']}" for found in guests.values() for g in found
                      if g.get("accelerator") and g.get("accelerator_reason")})
    facts = [_facts(data, k, guests[k]) for k in kernels]
    return Section(headline=_mixed(facts) + headline(data, kernels), kernels=kernels, facts=facts, reasons=reasons,
                   tables=[t for t in tables if t.rows], rule=_rule(),
                   dashes=[f"{k} {kernel_dash(k, kernels)[0]}" for k in kernels])


def _mixed(facts: list[dict]) -> str:
    """A sentence before the headline where the kernels' guests ran under different accelerators: a ratio between
    an emulated CPU's kernel and a virtualised one's measures the emulation as much as the kernel."""
    if len({f["accelerator"] for f in facts}) < 2:
        return ""
    under = "; ".join(f"{f['name']} under {f['accelerator']}" for f in facts)
    return (f"The kernels' guests ran under different accelerators ({under}): a ratio between them measures the "
            "accelerators as much as the kernels. ")


def _rule() -> str:
    return (f"compare's rule: the two kernels' repetitions' ranges apart, or with one repetition a ratio beyond "
            f"±{NOISE:.0%}; never at a point measured disturbed (other load, a throttled cgroup, a moved clock)")


def _guests(data: RunData, kernel: str) -> list[dict]:
    """What the guests of a kernel recorded: the run's metadata (each guest booted), and the points'."""
    booted = [g for g in (data.metadata.get("guests") or {}).values()
              if isinstance(g, dict) and kernel_name(str((g.get("kernel") or {}).get("spec", ""))) == kernel]
    return booted + [p.guest for p in data.points if p.series.kernel == kernel and p.guest]


def _facts(data: RunData, kernel: str, guests: list[dict]) -> dict:
    """A kernel's row of the kernels' table: from the run's metadata, else from what a guest of it recorded."""
    recorded = [(data.metadata.get("kernels") or {}).get(kernel), *(g.get("kernel") for g in guests)]
    facts: dict = next((f for f in recorded if isinstance(f, dict)), {})
    sha = str(facts.get("vmlinuz_sha256") or "")
    return {"name": kernel, "release": facts.get("release") or "–", "version": facts.get("version") or "–",
            "suite": facts.get("suite") or "–", "flavour": facts.get("flavour") or "–", "sha256": sha[:12] or "–",
            "accelerator": ", ".join(sorted({str(g["accelerator"]) for g in guests if g.get("accelerator")})) or "–",
            "vcpus": ", ".join(str(v) for v in sorted({g["vcpus"] for g in guests if g.get("vcpus")})) or "–"}


def _against_first(data: RunData, sweep: str, variant: str, line: Series, x: int, kernels: list[str]) \
        -> list[tuple[Group | None, ComparedPoint | None]]:
    """Each kernel's group at a point, and after the first kernel's, beside it as A where both have one."""
    groups = [data.groups.get((sweep, variant, line.on(k), x)) for k in kernels]
    first = groups[0]
    return [(g, ComparedPoint(first, g) if n and first and g else None) for n, g in enumerate(groups)]


def _lines(data: RunData, sweep: str, variant: str) -> list[Series]:
    """The sweep's lines with no kernel, in the report's order."""
    return list(dict.fromkeys(s.on("") for s in data.lines(sweep, variant)))


def _table(data: RunData, sweep_name: str, metric: Metric, kernels: list[str]) -> Table:
    sweep = SWEEPS[sweep_name]
    rows = []
    for variant in data.variants(sweep_name):
        for line in _lines(data, sweep_name, variant):
            levels = sorted({g.x for k in kernels for g in data.line(sweep_name, variant, line.on(k))})
            for x in levels:
                found = _against_first(data, sweep_name, variant, line, x, kernels)
                if all(group is None or group.median(metric.key) is None for group, _ in found):
                    continue  # skipped on every kernel (the method says why): nothing to compare
                cells = [_cell(group, compared, metric.key, metric.digits) for group, compared in found]
                rows.append(Row(variant.upper(), line, f"{x:,}", cells))
    return Table(sweep.title, f"{metric.title} [{metric.unit}]", sweep.x_label, rows)


def _cell(group: Group | None, compared: ComparedPoint | None, key: str, digits: int) -> Cell:
    median = group.median(key) if group else None
    if median is None:
        return Cell(group.status if group else "–")
    verdict = compared.verdict(key, NOISE) if compared else None
    if compared is None or verdict is None:
        return Cell(number(median, digits))
    return Cell(number(median, digits), times(compared.ratio(key)), verdict.change,
                "disturbed" if verdict.disturbed else "" if verdict.change else "within noise")


def headline(data: RunData, kernels: list[str]) -> str:
    """One sentence: what each kernel changed against the first (by compare's rule), or that none did."""
    first, others = kernels[0], kernels[1:]
    if not others:
        return f"Only {first} was measured: no other kernel to compare it with."
    parts, compared_count = [], 0
    for kernel in others:
        changes = []
        for sweep_name in (s for s in data.sweeps() if s in SWEEPS):
            for metric in compared_metrics(SWEEPS[sweep_name]):
                found = _kernel_points(data, sweep_name, metric, [first, kernel])
                compared_count += len(found) if metric is SWEEPS[sweep_name].main else 0
                changed = [c for c in found if (v := c.verdict(metric.key, NOISE)) and v.change]
                if changed:
                    changes.append(_changes_text(SWEEPS[sweep_name], metric, changed, len(found)))
        parts.append(f"{kernel} changed " + (" and ".join(changes) if changes else "nothing"))
    if not compared_count:
        return f"No point was measured on {first} and on another kernel: nothing to compare."
    if all(part.endswith(" changed nothing") for part in parts):
        return (f"By compare's rule, no kernel changed anything against {first} (the first of --kernels) at any of "
                f"the {compared_count} points measured on both.")
    return f"By compare's rule, against {first} (the first of --kernels), " + "; ".join(parts) + "."


def _kernel_points(data: RunData, sweep: str, metric: Metric, kernels: list[str]) -> list[ComparedPoint]:
    """The sweep's points both kernels measured the metric at, the first kernel's as A."""
    key = metric.key
    return [c for v in data.variants(sweep) for line in _lines(data, sweep, v)
            for x in sorted({g.x for g in data.line(sweep, v, line.on(kernels[0]))})
            for _, c in _against_first(data, sweep, v, line, x, kernels) if c and c.ratio(key) is not None]


def _changes_text(sweep: Sweep, metric: Metric, changed: list[ComparedPoint], count: int) -> str:
    """"the reply rate at 2 of 4 points (poll UP at 1,000 dead connections ×0.55, 9.54k → 5.2k replies/s; …)"."""
    key = metric.key
    largest = sorted(changed, key=lambda c: -abs(math.log(c.ratio(key) or 1.0)))[:NAMED]
    named = "; ".join(f"{c.group_a.series.on('').label} {c.group_a.variant.upper()} at {c.group_a.x:,} "
                      f"{sweep.x_unit} {times(c.ratio(key))}, {human(c.group_a.median(key))} → "
                      f"{human(c.group_b.median(key))} {metric.unit}" for c in largest)
    return f"the {metric.title} at {len(changed)} of {count} points ({named})"

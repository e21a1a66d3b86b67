"""The report of a run, and the comparison of two runs: one self-contained HTML page, a markdown summary.

render(run) writes results/<run>/report/: index.html (figures, CSS and data inline; no request leaves the
file, so it opens offline from an attachment), report.md (GitHub markdown linking figures/*.png),
figures/*.png and *.svg, and report.zip (the report with run.json, points/ and raw/). The report is derived
from the points: re-rendering replaces the report folder and never writes anything else in the run.

compare(a, b) writes the same kind of page for two runs with the ratio B/A at each point both measured.

Repetitions of a point (same sweep, variant, backend and x) are grouped: the figures draw their median and
the min-max over the repetitions that succeeded. Data strings (hostnames, command lines) reach the HTML only
through Jinja2 autoescaping and the markdown only through md_escape.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import statistics
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import jinja2

from . import catalog, checks, figures, model
from .catalog import Series
from .errors import UserError
from .results import Run

SWEEP_ORDER = ("dead", "pipetest")
VARIANT_ORDER = ("up", "smp")
REFERENCE_FILE = "lse-2002.json"
# The 2002 published series each sweep is drawn against.
REFERENCE_KEY = {"dead": "dphttpd_smp", "pipetest": "pipetest_smp"}
# Metadata that, when it differs, means two runs did not run on the same machine and kernel.
HOST_KEYS = ("hostname", "kernel", "kernel_version", "machine", "os_release", "cpu_model", "cpus",
             "memory_bytes", "fd_hard_limit")
FLAG_TEXT = {
    checks.CLIENT_SATURATED: "client saturated",
    checks.OTHER_LOAD: "other load",
    checks.CPU_THROTTLED: "CPU throttled",
    checks.CPU_FREQUENCY_CHANGED: "CPU clock changed",
    checks.SERVER_SATURATED: "server saturated",
}
# Flags that qualify a number quoted in a headline (a saturated server is what a benchmark expects).
CAVEATS = (checks.CLIENT_SATURATED, checks.OTHER_LOAD, checks.CPU_THROTTLED, checks.CPU_FREQUENCY_CHANGED)


@dataclass(frozen=True)
class Metric:
    key: str  # the field of a point's "figures"
    label: str  # axis label
    unit: str  # after a number in text
    slug: str  # figure file name part
    title: str
    digits: int  # decimals in tables


@dataclass(frozen=True)
class Sweep:
    name: str
    title: str
    x_label: str
    x_unit: str  # after a count in text: "19,500 dead connections"
    base_word: str  # "of its 0-dead rate", "of its 10-pipe rate"
    verb: str
    metrics: tuple[Metric, ...]
    logx: bool

    @property
    def main(self) -> Metric:
        return self.metrics[0]


SWEEPS = {
    "dead": Sweep(
        "dead", "Dead connections", "dead connections", "dead connections", "dead", "answered",
        (Metric("reply_rate", "reply rate [replies/s]", "replies/s", "reply-rate", "reply rate", 0),
         Metric("server_cpu_us_per_reply", "server CPU per reply [µs]", "µs/reply", "cpu-per-reply",
                "server CPU per reply", 1),
         Metric("reply_time_ms", "reply time [ms]", "ms", "reply-time", "reply time", 2)),
        logx=False),
    "pipetest": Sweep(
        "pipetest", "Pipetest", "pipes", "pipes", "pipe", "passed",
        (Metric("passes_per_s", "token passes per second", "token passes/s", "passes",
                "token passes per second", 0),),
        logx=True),
}


# ---------------------------------------------------------------------------------------------------------
# Numbers as text

def human(value: float | None) -> str:
    """Three significant digits with a k/M/G suffix: 31712 -> 31.7k, 60000 -> 60.0k, 414.5 -> 414."""
    if value is None:
        return "–"
    rounded = float(f"{value:.3g}")
    scale, suffix = next(((s, x) for s, x in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if abs(rounded) >= s), (1, ""))
    scaled = rounded / scale
    digits = 0 if abs(scaled) >= 100 or scaled == 0 else 1 if abs(scaled) >= 10 else 2
    return f"{scaled:.{digits}f}{suffix}"


def percent(ratio: float | None) -> str:
    if ratio is None:
        return "–"
    value = ratio * 100
    if value >= 10:
        return f"{value:.0f}%"
    if value >= 1:
        return f"{value:.1f}%"
    return f"{value:.2g}%"


def number(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def times(ratio: float | None) -> str:
    return "–" if ratio is None else f"×{ratio:.3f}" if 0.995 < ratio < 1.005 else f"×{ratio:.2f}"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~!])")


def md_escape(value) -> str:
    """Any text as literal GitHub markdown: <, > and & as entities (no raw HTML survives in any renderer),
    backslash escapes for the characters markdown would act on."""
    if value is None:
        return ""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\n", " ")


# ---------------------------------------------------------------------------------------------------------
# Loading and grouping

@dataclass
class Group:
    """The repetitions of one point: same sweep, variant, backend and x."""

    sweep: str
    variant: str
    series: Series
    x: int
    points: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> list[dict]:
        return [p for p in self.points if p.get("status") == "ok"]

    def values(self, key: str) -> list[float]:
        found = []
        for point in self.ok:
            value = (point.get("figures") or {}).get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                found.append(float(value))
        return found

    def median(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.median(values) if values else None

    def low(self, key: str) -> float | None:
        return min(self.values(key), default=None)

    def high(self, key: str) -> float | None:
        return max(self.values(key), default=None)

    def total(self, key: str) -> float | None:
        values = self.values(key)
        return sum(values) if values else None

    @property
    def status(self) -> str:
        statuses = {p.get("status") for p in self.points}
        if statuses == {"ok"}:
            return "ok"
        if statuses == {"skipped"}:
            return "skipped"
        return "partial" if "ok" in statuses else "failed"

    @property
    def reasons(self) -> list[str]:
        """Each distinct reason a repetition was skipped or failed, with its count when more than one."""
        counts = Counter((p.get("status"), p.get("reason") or "no reason recorded")
                         for p in self.points if p.get("status") != "ok")
        return [f"{status}: {reason}" + (f" (×{n})" if n > 1 else "") for (status, reason), n in counts.items()]

    @property
    def flags(self) -> list[str]:
        names = {name for p in self.ok for name, on in (p.get("flags") or {}).items() if on}
        return [FLAG_TEXT.get(name, name.replace("_", " ")) for name in sorted(names)]

    def flagged(self, name: str) -> bool:
        return any((p.get("flags") or {}).get(name) for p in self.ok)

    @property
    def host_max(self) -> bool:
        return any(p.get("host_max") for p in self.points)

    @property
    def loads(self) -> str:
        """The load generator of these points (httperf for points from before --load existed)."""
        return ", ".join(sorted({p.get("load") or "httperf" for p in self.points}))

    @property
    def bottleneck(self) -> str:
        """Whose CPU ran out while the load ran, by the saturation flags of the measured repetitions."""
        flags = [p.get("flags") or {} for p in self.ok]
        if not any(checks.SERVER_SATURATED in f or checks.CLIENT_SATURATED in f for f in flags):
            return "–"
        sides = [side for side in ("client", "server") if self.flagged(f"{side}_saturated")]
        return " and ".join(sides) + " CPU" if sides else "neither CPU"


@dataclass
class RunData:
    run: Run
    record: dict
    points: list[dict]
    groups: dict[tuple[str, str, Series, int], Group]

    @property
    def plan(self) -> dict:
        return self.record.get("plan") or {}

    @property
    def metadata(self) -> dict:
        return self.record.get("metadata") or {}

    def _ordered(self, found: set, preferred) -> list:
        return [x for x in preferred if x in found] + sorted(found - set(preferred))

    def sweeps(self) -> list[str]:
        return self._ordered({k[0] for k in self.groups}, SWEEP_ORDER)

    def variants(self, sweep: str) -> list[str]:
        return self._ordered({k[1] for k in self.groups if k[0] == sweep}, VARIANT_ORDER)

    def planned_lines(self, sweep: str) -> list[Series]:
        """The sweep's planned lines: the dead sweep's series (every server's backends), pipetest's backends."""
        if sweep == "dead":
            return [Series(**s) for s in self.plan.get("series") or []]
        return [Series(catalog.DEFAULT_SERVER, b) for b in self.plan.get("backends") or []]

    def lines(self, sweep: str, variant: str | None = None) -> list[Series]:
        found = {k[2] for k in self.groups if k[0] == sweep and variant in (None, k[1])}
        known = self.planned_lines(sweep) or [Series(catalog.DEFAULT_SERVER, b) for b in catalog.BACKENDS]
        return self._ordered(found, known)

    def line(self, sweep: str, variant: str, series: Series) -> list[Group]:
        return sorted((g for k, g in self.groups.items() if k[:3] == (sweep, variant, series)),
                      key=lambda g: g.x)

    def ordered_groups(self) -> list[Group]:
        return [g for s in self.sweeps() for v in self.variants(s) for b in self.lines(s, v)
                for g in self.line(s, v, b)]

    def all_groups(self, sweep: str) -> list[Group]:
        return [g for g in self.ordered_groups() if g.sweep == sweep]


def load(run: Run) -> RunData:
    """The run's record and points (upgraded to this schema), grouped by repetition; a schema this version
    cannot read is a UserError."""
    record = run.record()
    points = run.points()
    groups: dict[tuple[str, str, Series, int], Group] = {}
    for point in points:
        try:
            key = (str(point["sweep"]), str(point["variant"]), model.series_of(point), int(point["x"]))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{run.point_path(point.get('id', '?'))} lacks sweep, variant, backend or x: "
                            "it was not written by experiment/sweep.py") from None
        groups.setdefault(key, Group(*key)).points.append(point)
    for group in groups.values():
        group.points.sort(key=lambda p: (p.get("repetition") or 0, p.get("id", "")))
    return RunData(run=run, record=record, points=points, groups=groups)


def legend_lines() -> list[Series]:
    """The event library's backends, each in its style, for the colour legends."""
    return [Series(catalog.DEFAULT_SERVER, name) for name in catalog.EV_BACKENDS]


@cache
def reference() -> dict:
    """The 2002 published numbers shipped in the package (experiment/data/lse-2002.json)."""
    return json.loads(resources.files("experiment").joinpath("data", REFERENCE_FILE).read_text())


def reference_max(sweep: str) -> int:
    block = reference()[REFERENCE_KEY[sweep]]
    return max(int(x) for series in block["series"].values() for x, _ in series)


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

    @property
    def ratio(self) -> float | None:
        return self.value / self.base if self.base else None


@dataclass
class Headline:
    sweep: str
    variant: str
    x: int | None
    items: list[HeadlineItem]
    without_data: dict[Series, str]  # why it has no measured point
    text: str


def headline(data: RunData, sweep_name: str, variant: str) -> Headline | None:
    """The main metric of each backend at the largest x every backend measured, relative to its smallest x.

    A backend the host stops earlier than the rest (select at FD_SETSIZE: its higher levels are skipped)
    would pull that level down for all: it is quoted at its own last level instead, and said to stop there.
    """
    sweep = SWEEPS[sweep_name]
    key = sweep.main.key
    measured: dict[Series, dict[int, Group]] = {}
    without_data: dict[Series, str] = {}
    attempted_max: dict[Series, int] = {}
    host_capped: set[Series] = set()
    for backend in data.lines(sweep_name, variant):
        series = data.line(sweep_name, variant, backend)
        groups = {g.x: g for g in series if g.median(key) is not None}
        if groups:
            measured[backend] = groups
            attempted_max[backend] = max(g.x for g in series if g.status != "skipped")
            if any(g.status == "skipped" and g.x > attempted_max[backend] for g in series):
                host_capped.add(backend)
        else:
            reasons = [p.get("reason") for g in series for p in g.points if p.get("reason")]
            without_data[backend] = reasons[0] if reasons else "no measured point"
    if not measured:
        return None
    top = max(attempted_max.values())
    full = [b for b in measured if attempted_max[b] == top or b not in host_capped]
    common = set.intersection(*(set(measured[b]) for b in full))
    if not common:
        return None
    x = max(common)
    items = []
    for backend, groups in measured.items():
        at = x if backend in full else max(groups)
        base_x = min(groups)
        group = groups[at]
        caveats = [FLAG_TEXT[name] for name in CAVEATS if group.flagged(name)]
        items.append(HeadlineItem(series=backend, x=at, value=group.median(key), base_x=base_x,
                                  base=groups[base_x].median(key), flags=caveats,
                                  capped=backend not in full))
    return Headline(sweep_name, variant, x, items, without_data, _headline_text(sweep, variant, x, items,
                                                                                 without_data))


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


def headlines(data: RunData) -> list[Headline]:
    return [h for s in data.sweeps() if s in SWEEPS for v in data.variants(s)
            if (h := headline(data, s, v)) is not None]


def host_caps(data: RunData) -> list[str]:
    """Where the host stopped a sweep short of its plan or of the 2002 study, in one sentence each."""
    limits = data.record.get("limits") or {}
    fd_limit = limits.get("fd_hard_limit") or data.metadata.get("fd_hard_limit")
    sentences = []
    for sweep_name, limit_key in (("dead", "max_dead"), ("pipetest", "max_pipes")):
        if sweep_name not in data.sweeps():
            continue
        sweep = SWEEPS[sweep_name]
        skipped = [g for g in data.all_groups(sweep_name) if g.status == "skipped"]
        # limits are keyed by each line's label (model: the run record's display keys).
        lines = {s.label: s for s in data.lines(sweep_name)}
        caps = {lines[b]: int(v) for b, v in (limits.get(limit_key) or {}).items() if b in lines}
        planned = max(data.plan.get("dead" if sweep_name == "dead" else "pipes") or [0])
        if not skipped and not any(v < planned for v in caps.values()):
            continue
        if not caps:  # an older record without limits: the levels that ran say where it stopped
            caps = {b: max((g.x for v in data.variants(sweep_name) for g in data.line(sweep_name, v, b)
                            if g.status != "skipped"), default=0) for b in data.lines(sweep_name)}
        top = max(caps.values())
        host = f"This host allows {fd_limit} open files per process: " if fd_limit else ""
        what = f"dead connections stop at {top:,} per server" if sweep_name == "dead" else \
            f"pipetest stops at {top:,} pipes"
        text = f"{host}{what} (the 2002 study went to {reference_max(sweep_name):,})."
        for backend, cap in sorted(caps.items(), key=lambda kv: kv[1]):
            if cap < top:
                why = next((p.get("reason") for g in skipped if g.series == backend for p in g.points), None)
                text += f" {backend.label} stops at {cap:,} {sweep.x_unit}" + (f" ({why})." if why else ".")
        sentences.append(text)
    return sentences


def notices(data: RunData) -> list[str]:
    """What a reader must know before reading the numbers: incomplete run, failures, flagged points."""
    found = []
    status = data.record.get("status")
    if status != "complete":
        found.append(f"This run's status is {status!s}: it did not finish, so points may be missing.")
    if data.record.get("error"):
        found.append(f"The run stopped with an error: {data.record['error']}")
    for finding in data.record.get("preflight") or []:
        if isinstance(finding, dict):
            found.append(f"Preflight: {finding.get('setting')} was {finding.get('value')}, the plan needs "
                         f"{finding.get('needed')}: {finding.get('why')}"
                         + (" (changed for this run by --tune-host)." if _tuned(data, finding) else "."))
    missing = missing_levels(data)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        found.append(f"{len(missing)} planned points have no result: {shown}.")
    failed = [p for p in data.points if p.get("status") == "failed"]
    if failed:
        reasons = Counter(p.get("reason") or "no reason recorded" for p in failed)
        found.append(f"{len(failed)} points failed: "
                     + "; ".join(f"{r} (×{n})" if n > 1 else r for r, n in reasons.most_common()) + ".")
    ok = [p for p in data.points if p.get("status") == "ok"]
    flagged = Counter(name for p in ok for name, on in (p.get("flags") or {}).items() if on)
    if flagged.get(checks.CLIENT_SATURATED):
        found.append(f"At {flagged[checks.CLIENT_SATURATED]} of {len(ok)} measured points the client saturated "
                     "(ringed in the reply-rate figures): there the reply rate is the client's limit, not the "
                     "server's. Server CPU per reply still measures the server's cost per reply.")
    if flagged.get(checks.OTHER_LOAD):
        found.append(f"At {flagged[checks.OTHER_LOAD]} points other load ran on the host during the measurement.")
    if flagged.get(checks.CPU_THROTTLED):
        found.append(f"At {flagged[checks.CPU_THROTTLED]} points the server's or the client's cgroup was "
                     "throttled during the measurement: its CPU quota, not the mechanism, limited it.")
    if flagged.get(checks.CPU_FREQUENCY_CHANGED):
        found.append(f"At {flagged[checks.CPU_FREQUENCY_CHANGED]} points the CPU clock moved by more than "
                     f"{checks.FREQUENCY_CHANGE_FRACTION:.0%} during the measurement.")
    if (data.metadata.get("git") or {}).get("dirty"):
        found.append("The source tree had uncommitted changes when this run started (git dirty).")
    return found


def _tuned(data: RunData, finding: dict) -> bool:
    """Whether --tune-host raised this setting for the run (record "tuned": [{"setting", "old", "new"}])."""
    tuned = data.record.get("tuned") or data.metadata.get("tuned") or []
    settings = set(tuned) if isinstance(tuned, dict) else {t.get("setting") for t in tuned if isinstance(t, dict)}
    return finding.get("setting") in settings


def missing_levels(data: RunData) -> list[str]:
    """Planned (sweep, variant, backend, x) with no point file at all."""
    plan = data.plan
    missing = []
    for sweep_name in plan.get("sweeps") or []:
        levels = plan.get("dead" if sweep_name == "dead" else "pipes") or []
        for variant in plan.get("variants") or []:
            for backend in data.planned_lines(sweep_name):
                missing += [f"{sweep_name} {variant.upper()} {backend.label} {x:,}" for x in levels
                            if (sweep_name, variant, backend, int(x)) not in data.groups]
    return missing


# ---------------------------------------------------------------------------------------------------------
# Figures

def series_of(data: RunData, sweep_name: str, variant: str, backend: Series, key: str, label: str,
              scale_to_base: bool = False, ring_saturated: bool = False, dashed: bool = False) -> figures.Series:
    """One line: medians and min-max of the repetitions, optionally divided by its first value."""
    groups = [g for g in data.line(sweep_name, variant, backend) if g.median(key) is not None]
    base = groups[0].median(key) if groups and scale_to_base else 1.0
    base = base or 1.0
    return figures.Series(
        label=label, style=backend.style(), xs=[g.x for g in groups],
        medians=[g.median(key) / base for g in groups], lows=[g.low(key) / base for g in groups],
        highs=[g.high(key) / base for g in groups], dashed=dashed,
        saturated=[g.flagged(checks.CLIENT_SATURATED) for g in groups] if ring_saturated else [])


def _reference_series(sweep_name: str) -> list[figures.Series]:
    """The 2002 series of a sweep, each divided by its own first value."""
    block = reference()[REFERENCE_KEY[sweep_name]]
    found = []
    for name, pairs in block["series"].items():
        pairs = sorted(pairs)
        base = pairs[0][1]
        style = Series(catalog.DEFAULT_SERVER, figures.REFERENCE_BACKEND.get(name, name)).style()
        found.append(figures.Series(label=f"2002 {name} (SMP)", style=style,
                                    xs=[x for x, _ in pairs], medians=[y / base for _, y in pairs],
                                    reference=True))
    return found


def _has(data: RunData, sweep_name: str, variant: str, key: str) -> bool:
    return any(g.median(key) is not None for b in data.lines(sweep_name, variant)
               for g in data.line(sweep_name, variant, b))


def figure_name(sweep_name: str, slug: str, variant: str) -> str:
    return f"{sweep_name}-{slug}-{variant}"


@dataclass
class FigureRow:
    """One metric: a figure per variant, side by side."""

    title: str
    caption: str
    plots: list[figures.Plot]
    files: list[figures.FigureFile] = field(default_factory=list)


def _repetitions_text(data: RunData) -> str:
    repeat = data.plan.get("repeat") or 1
    return (f"Line: median of {repeat} repetitions; band: their minimum to maximum." if repeat > 1
            else "One repetition per point: no spread to show.")


def run_figure_rows(data: RunData) -> list[FigureRow]:
    rows = []
    for sweep_name in data.sweeps():
        if sweep_name not in SWEEPS:
            continue
        sweep = SWEEPS[sweep_name]
        for metric in sweep.metrics:
            variants = [v for v in data.variants(sweep_name) if _has(data, sweep_name, v, metric.key)]
            if not variants:
                continue
            plots = [figures.Plot(
                name=figure_name(sweep_name, metric.slug, v),
                title=f"{v.upper()}: {metric.title} vs {sweep.x_label}",
                xlabel=sweep.x_label, ylabel=metric.label, logx=sweep.logx, logy=sweep.logx,
                series=[series_of(data, sweep_name, v, b, metric.key, b.label,
                                  ring_saturated=metric.key == "reply_rate")
                        for b in data.lines(sweep_name, v)]) for v in variants]
            rows.append(FigureRow(f"{metric.title[0].upper()}{metric.title[1:]} vs {sweep.x_label}",
                                  _caption(data, sweep, metric), plots))
        variants = [v for v in data.variants(sweep_name) if _has(data, sweep_name, v, sweep.main.key)]
        if variants:
            first = reference()[REFERENCE_KEY[sweep_name]]["series"]
            base_x = min(x for pairs in first.values() for x, _ in pairs)
            plots = [figures.Plot(
                name=figure_name(sweep_name, "normalised", v),
                title=f"{v.upper()}: {sweep.main.title} relative to {base_x:,} {sweep.x_unit}, with 2002",
                xlabel=sweep.x_label, ylabel=f"{sweep.main.title} / own value at {base_x:,}",
                logx=sweep.logx, logy=sweep.logx,
                series=[series_of(data, sweep_name, v, b, sweep.main.key, b.label, scale_to_base=True)
                        for b in data.lines(sweep_name, v)] + _reference_series(sweep_name))
                for v in variants]
            rows.append(FigureRow(
                f"{sweep.main.title[0].upper()}{sweep.main.title[1:]} relative to {base_x:,} {sweep.x_unit}, "
                "with the 2002 study",
                f"Each series is divided by its own value at its smallest {sweep.x_unit[:-1]} count "
                f"(ideally {base_x:,}): ours by ours, 2002's by 2002's, so the shapes compare across 24 years "
                "of hardware while the absolute numbers do not. 2002 values (hollow markers, dotted): "
                + reference()["about"], plots))
    return rows


def _caption(data: RunData, sweep: Sweep, metric: Metric) -> str:
    spread = _repetitions_text(data)
    if metric.key == "reply_rate":
        loads = sorted({p.get("load") or "httperf" for p in data.points if p.get("sweep") == "dead"})
        what = {"httperf": "httperf's average reply rate", "wrk": "wrk's requests per second (its fixed "
                "connections, each sending its next request when the reply has come)"}
        return (" and ".join(what.get(name, name) for name in loads) + " while the server holds the dead "
                "connections. " + spread + " Ringed points: the client saturated, so there the rate is the "
                "client's limit.")
    if metric.key == "server_cpu_us_per_reply":
        return ("Server CPU time during the measurement divided by the replies it sent. This cost per reply "
                "holds whether or not the client saturated. " + spread)
    if metric.key == "reply_time_ms":
        return "The load generator's mean reply time (httperf's response time, wrk's latency). " + spread
    return "Token passes per second through the pipes, log-log. " + spread


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
    if sweep_name == "dead":
        columns += ["load", "bottleneck"]
    for metric in sweep.metrics:
        columns += [f"{metric.title} (median)", "min – max"]
    if sweep_name == "dead":
        columns.append("errors")
    columns += ["flags", "notes"]
    rows = []
    for group in data.all_groups(sweep_name):
        values = []
        for metric in sweep.metrics:
            values += [_value_cell(group, metric), _range_cell(group, metric)]
        if sweep_name == "dead":
            values.append(number(group.total("errors")))
        rows.append({"variant": group.variant.upper(), "backend": group.series,
                     "x": f"{group.x:,}" + (" (host max)" if group.host_max else ""),
                     "runs": f"{len(group.ok)} / {len(group.points)}", "values": values,
                     "about": [group.loads, group.bottleneck] if sweep_name == "dead" else [],
                     "flags": ", ".join(group.flags), "status": group.status, "reasons": group.reasons})
    return {"sweep": sweep_name, "title": sweep.title, "columns": columns, "rows": rows,
            "value_columns": len(columns) - 6 - (2 if sweep_name == "dead" else 0)}


def key_table(data: RunData, heads: list[Headline]) -> list[dict]:
    rows = []
    for head in heads:
        sweep = SWEEPS[head.sweep]
        for item in head.items:
            group = data.groups[(head.sweep, head.variant, item.series, item.x)]
            rows.append({
                "sweep": head.sweep, "variant": head.variant.upper(), "backend": item.series,
                "x": f"{item.x:,} {sweep.x_unit}", "value": f"{human(item.value)} {sweep.main.unit}",
                "relative": f"{percent(item.ratio)} of {item.base_x:,}-{sweep.base_word}",
                "cpu": number(group.median("server_cpu_us_per_reply"), 1) if head.sweep == "dead" else "",
                "time": number(group.median("reply_time_ms"), 2) if head.sweep == "dead" else "",
                "flags": ", ".join(item.flags + (["host stops it here"] if item.capped else []))})
    return rows


def flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as (dotted key, text) rows; lists of scalars stay on one row."""
    if isinstance(value, dict):
        rows = []
        for key, item in value.items():
            rows += flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return rows or [(prefix, "{}")]
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


def point_commands(point: dict) -> list[dict]:
    """The programs of one point: their cpuset, container and exact command line."""
    found = []
    for part in ("server", "deadconn", "httperf", "wrk", "pipetest"):
        section = point.get(part)
        if isinstance(section, dict) and section.get("command"):
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
            examples[sweep_name] = {"id": point.get("id", ""), "commands": point_commands(point)}
    limits = data.record.get("limits") or {}
    return {
        "examples": examples,
        "cpusets": [{"variant": v.upper(), **{k: str(x) for k, x in (c or {}).items()}}
                    for v, c in (data.record.get("cpusets") or {}).items()],
        "limits": flatten(limits) if limits else [],
        "plan": flatten({**data.plan, "series": [s.label for s in data.planned_lines("dead")]}) if data.plan else [],
        "points": [{"id": p.get("id", ""), "status": p.get("status", ""), "reason": p.get("reason") or "",
                    "started_at": p.get("started_at") or "", "commands": point_commands(p)}
                   for g in data.ordered_groups() for p in g.points],
    }


# ---------------------------------------------------------------------------------------------------------
# Writing

@cache
def html_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("experiment", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    _filters(env)
    return env


@cache
def md_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("experiment", "templates"), autoescape=False,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             finalize=md_escape, keep_trailing_newline=True)
    _filters(env)
    return env


_NUMERIC = re.compile(r"^[-–×+\d.,% ]+(?:\(host max\))?$")


def _filters(env: jinja2.Environment) -> None:
    env.filters.update(human=human, percent=percent, number=number, times=times)
    env.tests["numeric"] = lambda text: bool(_NUMERIC.match(str(text)))


def replace_folder(target: Path, build: Callable[[Path], None]) -> None:
    """Builds a folder beside target and swaps it in, so a failed render leaves the old one whole."""
    if target.exists() and ((target / "run.json").exists() or (target / "points").exists()):
        raise UserError(f"{target} holds a run, not a report: choose another output folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.new-"))
    fresh.chmod(0o755)
    try:
        build(fresh)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, old / target.name)
            os.replace(fresh, target)
            shutil.rmtree(old)
        else:
            os.replace(fresh, target)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise


def _zip_time(stamp: str | None) -> tuple[int, ...]:
    """A fixed timestamp for the zip's entries (the run's start) so the same run zips the same bytes."""
    match = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)", stamp or "")
    values = tuple(int(v) for v in match.groups()) if match else (1980, 1, 1, 0, 0, 0)
    return values if values[0] >= 1980 else (1980, 1, 1, 0, 0, 0)


def _write_zip(run: Run, record: dict, report_dir: Path, zip_path: Path) -> None:
    files = [(run.path / "run.json", "run.json")]
    for folder in ("points", "raw"):
        files += [(p, p.relative_to(run.path).as_posix()) for p in sorted((run.path / folder).rglob("*"))
                  if p.is_file()]
    files += [(p, "report/" + p.relative_to(report_dir).as_posix()) for p in sorted(report_dir.rglob("*"))
              if p.is_file() and p != zip_path]
    when = _zip_time(record.get("started_at"))
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for path, name in files:
            info = zipfile.ZipInfo(f"{run.id}/{name}", date_time=when)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            bundle.writestr(info, path.read_bytes())


def epollbench_version() -> str:
    try:
        from importlib.metadata import version
        return version("epollbench")
    except Exception:  # running from a checkout that was never installed
        return "checkout"


def report_context(data: RunData) -> dict:
    heads = headlines(data)
    return {
        "run_id": data.run.id,
        "record": data.record,
        "meta": data.metadata,
        "headlines": heads,
        "caps": host_caps(data),
        "notices": notices(data),
        "key_table": key_table(data, heads),
        "tables": [points_table(data, s) for s in data.sweeps() if s in SWEEPS],
        "method": method(data),
        "environment": flatten(data.metadata),
        "engines": engines_table(data.metadata),
        "run_record": flatten({k: v for k, v in data.record.items()
                               if k not in ("metadata", "plan", "cpusets", "limits", "schema_version")}),
        "command_line": shlex.join(str(c) for c in data.record.get("command_line") or []),
        "reference": reference(),
        "reference_tables": _reference_tables(),
        "colours": legend_lines(),
        "version": epollbench_version(),
        "counts": Counter(p.get("status") for p in data.points),
    }


def _reference_number(value: float | None) -> str:
    return number(value, 0 if value is None or float(value).is_integer() else 1)


def _reference_tables() -> list[dict]:
    found = []
    for key, block in reference().items():
        if isinstance(block, dict) and "series" in block:
            xs = sorted({int(x) for pairs in block["series"].values() for x, _ in pairs})
            rows = [[name] + [_reference_number(dict((int(x), y) for x, y in pairs).get(x)) for x in xs]
                    for name, pairs in block["series"].items()]
            found.append({"key": key, "metric": block.get("metric", ""), "x": block.get("x", "dead connections"),
                          "xs": [f"{x:,}" for x in xs], "rows": rows, "about": block.get("about", ""),
                          "notes": block.get("notes", "")})
    return found


def render(run: Run) -> Path:
    """Writes run/report/ (index.html, report.md, figures/, report.zip) from the points; returns index.html."""
    data = load(run)
    target = run.path / "report"
    context = report_context(data)

    def build(folder: Path) -> None:
        rows = run_figure_rows(data)
        for row in rows:
            row.files = [figures.save(plot, folder / "figures") for plot in row.plots]
        context["figure_rows"] = rows
        (folder / "index.html").write_text(html_env().get_template("report.html.j2").render(context))
        (folder / "report.md").write_text(md_env().get_template("report.md.j2").render(context))
        _write_zip(run, data.record, folder, folder / "report.zip")

    replace_folder(target, build)
    return target / "index.html"

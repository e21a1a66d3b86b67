"""Two runs side by side: the ratio B/A at every point both measured, and what differs between them.

The modern form of the 2002 page's comparison of two sys_epoll versions: two kernels, two machines or two
image versions. Points only one run measured (or only one measured successfully) are left out and listed;
metadata that differs is listed, first the host and kernel facts that make the runs not like for like.

A difference is called a change only by compare's rule (verdict.py: the repetitions' ranges apart, or with one
repetition B/A beyond the noise allowance; never at a disturbed point), and the headline lists only changes.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from ..errors import UserError
from ..run.results import RESULTS, Run
from . import draw
from .data import EMULATED, HOST_KEYS, SWEEPS, VARIANT_ORDER, Group, RunData, legend_lines, load
from .page import flatten
from .plots import FigureRow, figure_name, series_of
from .render import epollbench_version, html_env, md_env, replace_folder
from .styles import kernel_dash, style
from .text import human, number, times
from .verdict import NOISE, ComparedPoint, rule_text


def noise_fraction(flag: str | None) -> float:
    """--noise as given (a fraction, e.g. 0.1), or NOISE."""
    if flag is None:
        return NOISE
    try:
        value = float(flag)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise UserError(f"--noise {flag!r}: give a fraction from 0 to below 1, e.g. 0.15 for ±15%")
    return value


def refuse_unlike(a: RunData, b: RunData) -> None:
    """Refuses, in one line naming why, two runs whose points must not share a line: one measured in guests and
    the other on its host's own kernel, guests on other kernels, or guests under other accelerators (an
    emulated CPU's costs are not a real one's)."""
    if a.plan.kernel_names() != b.plan.kernel_names():
        raise UserError(f"{a.run.id} ran {_where(a)} and {b.run.id} {_where(b)}: compare runs of the same --kernels "
                        "(each run's Kernels section compares its own kernels)")
    if _accelerators(a) != _accelerators(b):
        raise UserError(f"{a.run.id}'s guests ran under {_accelerators(a)} and {b.run.id}'s under "
                        f"{_accelerators(b)}, and an emulated CPU's (tcg) costs are not a real one's: compare runs "
                        "under the same accelerator")


def _where(data: RunData) -> str:
    kernels = [k for k in data.plan.kernel_names() if k]
    return f"in guests on kernels {', '.join(kernels)}" if kernels else "on its host's own kernel"


def _accelerators(data: RunData) -> str:
    """The accelerators the run's guests ran under, as a point records its guest's."""
    return ", ".join(sorted({str(p.guest.get("accelerator")) for p in data.points if p.guest})) or "none"


def _why_unmeasured(group: Group) -> str:
    reasons = [p.reason for p in group.points if not p.ok and p.reason]
    return f"{group.status}: {reasons[0]}" if reasons else group.status


def compared_points(a: RunData, b: RunData) -> tuple[list[ComparedPoint], list[str]]:
    """The points both runs measured, in order, and why every other point was left out.

    A point neither run measured (both skipped it at the host's limit, say) is counted by reason rather
    than listed: it is no difference between the runs.
    """
    both, left_out = [], []
    neither: Counter[str] = Counter()
    groups = a.ordered_groups() + [g for g in b.ordered_groups()
                                   if (g.sweep, g.variant, g.series, g.x) not in a.groups]
    for group in groups:
        key = (group.sweep, group.variant, group.series, group.x)
        label = f"{group.sweep} {group.variant.upper()} {group.series.label} {group.x:,}"
        ga, gb = a.groups.get(key), b.groups.get(key)
        if key[0] not in SWEEPS:
            left_out.append(f"{label}: a sweep this epollbench does not know")
            continue
        if ga is None or gb is None:
            left_out.append(f"{label}: only in {'A' if gb is None else 'B'}")
            continue
        main = SWEEPS[key[0]].main.key
        a_measured, b_measured = ga.median(main) is not None, gb.median(main) is not None
        if a_measured and b_measured:
            both.append(ComparedPoint(ga, gb))
        elif a_measured or b_measured:
            side, group_missing = ("B", gb) if a_measured else ("A", ga)
            left_out.append(f"{label}: {side} {_why_unmeasured(group_missing)}")
        else:
            neither[_why_unmeasured(ga)] += 1
    left_out += [f"{n} point{'s' if n > 1 else ''} measured by neither run ({why})"
                 for why, n in neither.most_common()]
    return both, left_out


def metadata_differences(a: dict, b: dict) -> list[dict]:
    """Every run-level setting or fact that differs: metadata, plan, cpusets, limits."""
    rows = []
    for section in ("metadata", "plan", "cpusets", "limits", "profile"):
        flat_a = dict(flatten(a.get(section), section))
        flat_b = dict(flatten(b.get(section), section))
        for key in list(flat_a) + [k for k in flat_b if k not in flat_a]:
            va, vb = flat_a.get(key, "(absent)"), flat_b.get(key, "(absent)")
            if va != vb:
                host = section == "metadata" and _host_fact(key, va, vb)
                rows.append({"key": key, "a": va, "b": vb, "host": host})
    return rows


def _host_fact(key: str, a: str, b: str) -> bool:
    """Whether a metadata key that differs says the runs ran on other hosts or kernels: this machine's facts,
    or those of the host of an engine (metadata.engines.server.kernel), where both runs recorded it (a run
    from before engines were recorded is no other host for want of them)."""
    parts = key.split(".")
    if parts[1] == "engines":
        return len(parts) == 4 and parts[3] in HOST_KEYS and "(absent)" not in (a, b)
    return parts[1] in HOST_KEYS


def compare_headline(compared: list[ComparedPoint], noise: float = NOISE, count: int = 3) -> list[str]:
    """Per sweep, the changes of its main metric (by Verdict), largest first; or that there were none."""
    sentences = []
    for sweep_name, sweep in SWEEPS.items():
        main = sweep.main.key
        rows = [(c, ratio) for c in compared if c.key[0] == sweep_name and (ratio := c.ratio(main))]
        if not rows:
            continue
        verdicts = [c.verdict(main, noise) for c, _ in rows]
        changed = [row for row, v in zip(rows, verdicts, strict=True) if v and v.change]
        disturbed = sum(1 for v in verdicts if v and v.disturbed)
        title = f"{sweep.main.title[0].upper()}{sweep.main.title[1:]}"
        aside = (f" {disturbed} of them were measured disturbed (other load, throttling or a moved clock in a "
                 "run) and count as no change whatever their numbers." if disturbed else "")
        if not changed:
            sentences.append(f"{title}: no change at any of {len(rows)} common points ({rule_text(noise)})."
                             + aside)
            continue
        largest = sorted(changed, key=lambda row: -abs(math.log(row[1])))[:count]
        changes = "; ".join(
            f"{c.group_a.series.label} {c.group_a.variant.upper()} at {c.group_a.x:,} {sweep.x_unit} "
            f"{times(ratio)} ({human(c.group_a.median(main))} → {human(c.group_b.median(main))} "
            f"{sweep.main.unit})" for c, ratio in largest)
        sentences.append(f"{title}: changed at {len(changed)} of {len(rows)} common points ({rule_text(noise)}); "
                         f"largest: {changes}. The other {len(rows) - len(changed)} are no change." + aside)
    return sentences


def compare_figure_rows(a: RunData, b: RunData, compared: list[ComparedPoint]) -> list[FigureRow]:
    rows = []
    common = {c.key for c in compared}
    kernels = a.kernels()
    note = EMULATED if a.emulated or b.emulated else ""
    # Over several kernels each line keeps its kernel's dash pattern, so B's lines differ by hollow markers alone.
    over_kernels = any(kernels)
    look_b = {"hollow": True} if over_kernels else {"dashed": True}
    sides = "A (filled) and B (hollow)" if over_kernels else "A (solid) and B (dashed, hollow)"
    for sweep_name, sweep in SWEEPS.items():
        variants = [v for v in VARIANT_ORDER + tuple(sorted({k[1] for k in common} - set(VARIANT_ORDER)))
                    if any(k[:2] == (sweep_name, v) for k in common)]
        for metric in sweep.metrics:
            plots = []
            for v in variants:
                backends = [x for x in a.lines(sweep_name, v) if any(k[:3] == (sweep_name, v, x) for k in common)]
                series, ratio_series = [], []
                for backend in backends:
                    for side, data, look in (("A", a, {}), ("B", b, look_b)):
                        series.append(series_of(_restricted(data, common), sweep_name, v, backend, metric.key,
                                                f"{backend.label} {side}", **look))
                    pts = [(c.key[3], ratio) for c in compared if c.key[:3] == (sweep_name, v, backend)
                           and (ratio := c.ratio(metric.key)) is not None]
                    ratio_series.append(draw.Series(label=backend.label, style=style(backend, kernels),
                                                    xs=[x for x, _ in pts], medians=[r for _, r in pts]))
                if any(s.medians for s in series):
                    plots.append(draw.Plot(
                        name=figure_name(sweep_name, metric.slug, v),
                        title=f"{v.upper()}: {metric.title}, {sides}",
                        xlabel=sweep.x_label, ylabel=metric.label, logx=sweep.logx, logy=sweep.logx,
                        series=series, ratio_series=ratio_series, note=note))
            if plots:
                rows.append(FigureRow(f"{metric.title[0].upper()}{metric.title[1:]}: B / A",
                                      "Medians of each run at the points both measured; lower panel: B / A.",
                                      plots))
    return rows


def _line_key(a: RunData) -> str:
    """How the figures tell run A's lines from run B's (compare_figure_rows), in words."""
    kernels = [k for k in a.kernels() if k]
    if not kernels:
        return "Run A: solid lines, filled markers; run B: dashed lines, hollow markers."
    dashes = ", ".join(f"{k} {kernel_dash(k, kernels)[0]}" for k in kernels)
    return f"Run A: filled markers; run B: hollow markers; each kernel in its dash pattern ({dashes})."


def _restricted(data: RunData, keys: set) -> RunData:
    return RunData(run=data.run, record=data.record, points=data.points,
                   groups={k: g for k, g in data.groups.items() if k in keys})


def compare_table(compared: list[ComparedPoint], noise: float = NOISE) -> list[dict]:
    tables = []
    for sweep_name, sweep in SWEEPS.items():
        rows = [c for c in compared if c.key[0] == sweep_name]
        if not rows:
            continue
        columns = ["variant", "backend", sweep.x_label]
        for metric in sweep.metrics:
            columns += [f"{metric.title} A", "B", "B / A"]
        body = []
        for c in rows:
            cells = [c.key[1].upper(), c.key[2], f"{c.key[3]:,}"]
            for metric in sweep.metrics:
                verdict = c.verdict(metric.key, noise)
                ratio = times(c.ratio(metric.key))
                cells += [number(c.group_a.median(metric.key), metric.digits),
                          number(c.group_b.median(metric.key), metric.digits),
                          ratio if verdict is None or verdict.change else
                          f"{ratio} ({'disturbed' if verdict.disturbed else 'within noise'})"]
            flags = sorted(set(c.group_a.flags) | set(c.group_b.flags))
            body.append({"cells": cells, "flags": ", ".join(flags)})
        tables.append({"sweep": sweep_name, "title": sweep.title, "columns": columns + ["flags"], "rows": body})
    return tables


def write(run_a: Run, run_b: Run, out_dir: Path | None = None, noise: float = NOISE) -> Path:
    """Writes the comparison page of two runs (B relative to A); returns its index.html."""
    a, b = load(run_a), load(run_b)
    refuse_unlike(a, b)
    target = Path(out_dir) if out_dir else RESULTS / f"compare-{run_a.id}-vs-{run_b.id}"
    compared, left_out = compared_points(a, b)
    if not compared:
        raise UserError(f"{run_a.id} and {run_b.id} have no measured point in common: "
                        "compare runs of the same sweeps, variants and backends")
    differences = metadata_differences(a.record.to_json(), b.record.to_json())
    context = {
        "a": {"id": run_a.id, "record": a.record, "meta": a.metadata},
        "b": {"id": run_b.id, "record": b.record, "meta": b.metadata},
        "headline": compare_headline(compared, noise),
        "host_differences": [d for d in differences if d["host"]],
        "differences": differences,
        "left_out": left_out,
        "tables": compare_table(compared, noise),
        "colours": legend_lines(),
        "version": epollbench_version(),
        "common_count": len(compared),
        "emulated": EMULATED if a.emulated or b.emulated else "",
        "line_key": _line_key(a),
    }

    def build(folder: Path) -> None:
        rows = compare_figure_rows(a, b, compared)
        for row in rows:
            row.files = [draw.save(plot, folder / "figures") for plot in row.plots]
        context["figure_rows"] = rows
        (folder / "index.html").write_text(html_env().get_template("compare.html.j2").render(context))
        (folder / "report.md").write_text(md_env().get_template("compare.md.j2").render(context))

    replace_folder(target, build)
    return target / "index.html"

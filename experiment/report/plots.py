"""Which lines go into which figure: each sweep's metrics per variant, with the 2002 reference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import catalog
from ..catalog import Series
from ..host import checks
from ..model import DEAD, DEAD_OPEN
from . import beyond, draw
from .data import EMULATED, REFERENCE_KEY, SWEEPS, Metric, RunData, Sweep, reference
from .styles import style
from .text import human

# ---------------------------------------------------------------------------------------------------------
# Figures

def series_of(data: RunData, sweep_name: str, variant: str, backend: Series, key: str, label: str,
              scale_to_base: bool = False, ring_saturated: bool = False, dashed: bool = False,
              thin: bool = False, hollow: bool = False) -> draw.Series:
    """One line: medians and min-max of the repetitions, optionally divided by its first value."""
    groups = [(g, g.values(key)) for g in data.line(sweep_name, variant, backend) if g.values(key)]
    base = (groups[0][0].measured_median(key) if groups and scale_to_base else 1.0) or 1.0
    return draw.Series(
        label=label, style=style(backend, data.kernels()), xs=[g.x for g, _ in groups],
        medians=[g.measured_median(key) / base for g, _ in groups], lows=[min(v) / base for _, v in groups],
        highs=[max(v) / base for _, v in groups], dashed=dashed, thin=thin, hollow=hollow,
        saturated=[g.flagged(checks.CLIENT_SATURATED) for g, _ in groups] if ring_saturated else [])


def _reference_series(sweep_name: str) -> list[draw.Series]:
    """The 2002 series of a sweep, each divided by its own first value."""
    block = reference()[REFERENCE_KEY[sweep_name]]
    found = []
    for name, pairs in block["series"].items():
        pairs = sorted(pairs)
        base = pairs[0][1]
        line = Series(catalog.DEFAULT_SERVER, draw.REFERENCE_BACKEND.get(name, name))
        found.append(draw.Series(label=f"2002 {name} (SMP)", style=style(line),
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
    plots: Sequence[draw.Plot | draw.StackedBars]
    files: list[draw.FigureFile] = field(default_factory=list)


def _repetitions_text(data: RunData) -> str:
    repeat = data.plan.repeat
    return (f"Line: median of {repeat} repetitions; band: their minimum to maximum." if repeat > 1
            else "One repetition per point: no spread to show.")


def _panels(data: RunData, sweep_name: str, variants: list[str]) -> list[tuple[str, str, str, list[Series]]]:
    """The figures of a metric, one per variant, and for pipetest with both walks one per variant and walk
    (each backend's line keeps its style in both): (name suffix, title prefix, walk, lines)."""
    walks = list(dict.fromkeys(b.walk for v in variants for b in data.lines(sweep_name, v)))
    if len(walks) < 2:
        return [(v, v.upper(), "", data.lines(sweep_name, v)) for v in variants]
    return [(f"{v}-{w}", f"{v.upper()}, {w} walk", w, [b for b in data.lines(sweep_name, v) if b.walk == w])
            for v in variants for w in walks]


def _extrapolated(extended: list[beyond.Extrapolation], variant: str, kernels: list[str]) -> list[draw.Series]:
    """A stopped line's fit from its last measured level to the 2002 study's largest, dashed."""
    return [draw.Series(label=f"{e.series.label} extrapolated", style=style(e.series, kernels),
                        xs=[e.xs[-1], e.to_x], medians=[e.at(e.xs[-1]), e.value], dashed=True)
            for e in extended if e.variant == variant]


def run_figure_rows(data: RunData) -> list[FigureRow]:
    rows = []
    extended = beyond.extrapolations(data)
    note = EMULATED if data.emulated else ""
    for sweep_name in data.sweeps():
        if sweep_name not in SWEEPS:
            continue
        sweep = SWEEPS[sweep_name]
        for metric in sweep.metrics:
            variants = [v for v in data.variants(sweep_name) if _has(data, sweep_name, v, metric.key)]
            if not variants:
                continue
            title = f"{metric.title} and {metric.thin_label} (thin)" if metric.thin else metric.title
            plots = [draw.Plot(
                name=figure_name(sweep_name, metric.slug, suffix),
                title=f"{prefix}: {title} vs {sweep.x_label}",
                xlabel=sweep.x_label, ylabel=metric.label, logx=sweep.logx, logy=sweep.logx or metric.logy,
                series=[series_of(data, sweep_name, v, b, metric.key,
                                  f"{_label(b, w)} {metric.line_label}".strip(),
                                  ring_saturated=metric.key == "reply_rate")
                        for b in lines] + _thin_series(data, sweep_name, v, metric)
                + (_extrapolated(extended, v, data.kernels())
                   if sweep_name == DEAD and metric.key == "server_cpu_us_per_reply" else []), note=note)
                for v in variants for suffix, prefix, w, lines in _panels(data, sweep_name, [v])]
            rows.append(FigureRow(f"{_capital(title)} vs {sweep.x_label}",
                                  _caption(data, sweep, metric), plots))
        variants = [v for v in data.variants(sweep_name) if _has(data, sweep_name, v, sweep.main.key)]
        if variants and sweep.reference:
            first = reference()[REFERENCE_KEY[sweep_name]]["series"]
            base_x = min(x for pairs in first.values() for x, _ in pairs)
            plots = [draw.Plot(
                name=figure_name(sweep_name, "normalised", suffix),
                title=f"{title}: {sweep.main.title} relative to {base_x:,} {sweep.x_unit}, with 2002",
                xlabel=sweep.x_label, ylabel=f"{sweep.main.title} / own value at {base_x:,}",
                logx=sweep.logx, logy=sweep.logx,
                series=[series_of(data, sweep_name, v, b, sweep.main.key, _label(b, w), scale_to_base=True)
                        for b in lines] + _reference_series(sweep_name), note=note)
                for v in variants for suffix, title, w, lines in _panels(data, sweep_name, [v])]
            rows.append(FigureRow(
                f"{sweep.main.title[0].upper()}{sweep.main.title[1:]} relative to {base_x:,} {sweep.x_unit}, "
                "with the 2002 study",
                f"Each series is divided by its own value at its smallest {sweep.x_unit[:-1]} count "
                f"(ideally {base_x:,}): ours by ours, 2002's by 2002's, so the shapes compare across 24 years "
                "of hardware while the absolute numbers do not. 2002 values (hollow markers, dotted): "
                + reference()["about"], plots))
    return rows


def _label(line: Series, walk: str) -> str:
    """A line's name in a figure's legend: in a figure of one token walk, without the walk the title names."""
    return line.walking("").label if walk else line.label


def _capital(text: str) -> str:
    """A title's first letter in capitals, unless its first word is a name such as p99."""
    first = text.split(" ", 1)[0]
    return text if any(c.isdigit() for c in first) else text[0].upper() + text[1:]


def _thin_series(data: RunData, sweep_name: str, variant: str, metric: Metric) -> list[draw.Series]:
    """A metric's companion figure (p50 beside p99), one thinner line per series."""
    if metric.thin is None:
        return []
    return [series_of(data, sweep_name, variant, b, metric.thin, f"{b.label} {metric.thin_label}", thin=True)
            for b in data.lines(sweep_name, variant)]


def _offered(data: RunData) -> str:
    """The open loop's offered rate and where it came from, in words."""
    recorded = data.record.open_rate or {}
    rate = recorded.get("rate")
    if not rate:
        return "one offered rate"
    text = f"{human(rate)} requests/s offered"
    if recorded.get("share") and recorded.get("lowest"):
        capacity = (recorded.get("capacity") or {}).get(recorded["lowest"])
        text += (f" ({recorded['share']:g} × {human(capacity)}/s, the lowest capacity at 0 dead connections, "
                 f"{recorded['lowest']}'s, by wrk)")
    return text


def _caption(data: RunData, sweep: Sweep, metric: Metric) -> str:
    spread = _repetitions_text(data)
    if sweep.name == DEAD_OPEN:
        return _open_caption(data, metric) + " " + spread
    if metric.key == "reply_rate":
        loads = sorted({p.load for p in data.points if p.sweep == DEAD and p.load})
        what = {"httperf": "httperf's average reply rate", "wrk": "wrk's requests per second (its fixed "
                "connections, each sending its next request when the reply has come)"}
        return (" and ".join(what.get(name, name) for name in loads) + " while the server holds the dead "
                "connections. " + spread + " Ringed points: the client saturated, so there the rate is the "
                "client's limit.")
    if metric.key == "server_cpu_us_per_reply":
        extended = (" Dashed from a line's last level: its extrapolation to the 2002 study's largest level, a "
                    "least-squares line through its measured points (the fit and its residuals: Notices, "
                    "Extrapolated); not measured." if beyond.extrapolations(data) else "")
        return ("Server CPU time during the measurement divided by the replies it sent. This cost per reply "
                "holds whether or not the client saturated. " + spread + extended)
    if metric.key == "reply_time_ms":
        return "The load generator's mean reply time (httperf's response time, wrk's latency). " + spread
    walks = (" One figure per token walk: stay (each token keeps its pipe) and stride (the 2002 pipetest.c's "
             "walk through all the pipes)." if beyond.walks_note(data) else "")
    return "Token passes per second through the pipes, log-log. " + spread + walks


def _open_caption(data: RunData, metric: Metric) -> str:
    offered = _offered(data)
    if metric.thin is not None:
        return (f"openload at {offered}, open loop: each request's latency counts from the time it was due "
                "(coordinated omission corrected), so a server that falls behind is charged for every request it "
                "delayed. Thick lines p99, thin lines p50; log scale. Requests unanswered after openload's timeout "
                "are errors, not latencies: at an overloaded point the p99 is a lower bound.")
    if metric.key == "server_cpu_busy_pct":
        return (f"The server's CPU time (its cgroup) over openload's run at {offered}, in % of its cpuset: at a fixed "
                "rate, what the dead connections cost shows as CPU, until it runs out (100%).")
    if metric.key == "server_cpu_us_per_reply":
        return "Server CPU time during the open-loop measurement divided by the replies it sent."
    return (f"Replies per second openload received at {offered}: below the offered rate, the server did not keep "
            "up (flagged overloaded).")

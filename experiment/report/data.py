"""A run's points loaded and grouped: the repetitions of each (sweep, variant, series, x), the sweeps' metrics,
and the 2002 reference numbers."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from .. import catalog, model
from ..catalog import Series
from ..host import checks
from ..model import DEAD, DEAD_OPEN, PIPETEST, Plan, Point, RunRecord
from ..run.results import Run

VARIANT_ORDER = ("up", "smp")
REFERENCE_FILE = "lse-2002.json"
# The 2002 published series each sweep is drawn against.
REFERENCE_KEY = {DEAD: "dphttpd_smp", DEAD_OPEN: "dphttpd_smp", PIPETEST: "pipetest_smp"}
# Metadata that, when it differs, means two runs did not run on the same machine and kernel.
HOST_KEYS = ("hostname", "kernel", "kernel_version", "machine", "os_release", "cpu_model", "cpus",
             "memory_bytes", "fd_hard_limit")
FLAG_TEXT = {
    checks.CLIENT_SATURATED: "client saturated",
    checks.OTHER_LOAD: "other load",
    checks.CPU_THROTTLED: "CPU throttled",
    checks.CPU_FREQUENCY_CHANGED: "CPU clock changed",
    checks.SERVER_SATURATED: "server saturated",
    checks.LAGGED: "late sends",
    checks.LAGGED_P99: "generator lagged for p99",
    checks.LAGGED_P999: "generator lagged for p99.9",
    checks.OVERLOADED: "server overloaded",
    checks.INTERFERED: "third parties on the server's CPUs",
}
# The accelerator of a guest whose CPU QEMU emulates (guest/accel.py), and what labels every figure and table
# of a run measured so: an emulated CPU's costs are not a real one's, but both kernels paid them alike.
TCG = "tcg"
EMULATED = "emulated (TCG): compare these kernels with each other, not with native runs"
# Flags that qualify a number quoted in a headline (a saturated server is what a benchmark expects).
CAVEATS = (checks.CLIENT_SATURATED, checks.OTHER_LOAD, checks.INTERFERED, checks.CPU_THROTTLED,
           checks.CPU_FREQUENCY_CHANGED)


@dataclass(frozen=True)
class Metric:
    sweep: str
    key: str  # the field of the sweep's figures (model.FIGURES)
    label: str  # axis label
    unit: str  # after a number in text
    slug: str  # figure file name part
    title: str
    digits: int  # decimals in tables
    logy: bool = False  # a log y axis whatever the values' spread
    thin: str | None = None  # another figure of the sweep drawn in the same plot as a thinner line (p50 beside p99)
    thin_label: str = ""  # what its lines' labels add to the series' label
    line_label: str = ""  # what the metric's own lines' labels add, beside thin ones

    def __post_init__(self) -> None:
        for key in (self.key, self.thin):
            if key is not None and key not in model.figure_names(self.sweep):
                raise ValueError(f"{key} is not a figure the {self.sweep} sweep measures (model.FIGURES)")


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
    limit: str  # the run record's "limits" entry of the most a host allows per line
    reference: bool = True  # drawn against the 2002 study's numbers (REFERENCE_KEY)

    def __post_init__(self) -> None:
        if any(m.sweep != self.name for m in self.metrics):
            raise ValueError(f"{self.name} sweep: a metric of another sweep")

    @property
    def main(self) -> Metric:
        return self.metrics[0]


REPLY_RATE = Metric(DEAD, "reply_rate", "reply rate [replies/s]", "replies/s", "reply-rate", "reply rate", 0)
CPU_PER_REPLY = Metric(DEAD, "server_cpu_us_per_reply", "server CPU per reply [µs]", "µs/reply",
                       "cpu-per-reply", "server CPU per reply", 1)
REPLY_TIME = Metric(DEAD, "reply_time_ms", "reply time [ms]", "ms", "reply-time", "reply time", 2)
ERRORS = Metric(DEAD, "errors", "errors", "errors", "errors", "errors", 0)
PASSES = Metric(PIPETEST, "passes_per_s", "token passes per second", "token passes/s", "passes",
                "token passes per second", 0)

# The open loop (DEAD_OPEN): latency at one offered rate, and what it costs the server.
P99 = Metric(DEAD_OPEN, "latency_p99_ms", "reply latency [ms]", "ms", "latency", "p99 reply latency", 2, logy=True,
             thin="latency_p50_ms", thin_label="p50", line_label="p99")
P50 = Metric(DEAD_OPEN, "latency_p50_ms", "p50 reply latency [ms]", "ms", "latency-p50", "p50 reply latency", 2)
CPU_BUSY = Metric(DEAD_OPEN, "server_cpu_busy_pct", "server CPU busy [% of its cpuset]", "%", "cpu-busy",
                  "server CPU busy at the fixed rate", 1)
OPEN_CPU_PER_REPLY = Metric(DEAD_OPEN, "server_cpu_us_per_reply", "server CPU per reply [µs]", "µs/reply",
                            "cpu-per-reply", "server CPU per reply", 1)
ACHIEVED = Metric(DEAD_OPEN, "achieved_rate", "achieved rate [replies/s]", "replies/s", "achieved-rate",
                  "achieved rate", 0)

SWEEPS = {
    DEAD: Sweep(DEAD, "Dead connections", "dead connections", "dead connections", "dead", "answered",
                (REPLY_RATE, CPU_PER_REPLY, REPLY_TIME), logx=False, limit="max_dead"),
    DEAD_OPEN: Sweep(DEAD_OPEN, "Dead connections, open loop at a fixed rate", "dead connections",
                     "dead connections", "dead", "answered", (P99, CPU_BUSY, OPEN_CPU_PER_REPLY, ACHIEVED),
                     logx=False, limit="max_dead_open", reference=False),
    PIPETEST: Sweep(PIPETEST, "Pipetest", "pipes", "pipes", "pipe", "passed", (PASSES,), logx=True,
                    limit="max_pipes"),
}



# ---------------------------------------------------------------------------------------------------------
# Loading and grouping

@dataclass
class Group:
    """The repetitions of one point: same sweep, variant, backend and x."""

    sweep: str
    variant: str
    series: Series
    x: int
    points: list[Point] = field(default_factory=list)

    @property
    def ok(self) -> list[Point]:
        return [p for p in self.points if p.ok]

    def values(self, key: str) -> list[float]:
        found = []
        for point in self.ok:
            value = getattr(point.figures, key) if point.figures is not None else None
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                found.append(float(value))
        return found

    def median(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.median(values) if values else None

    def measured_median(self, key: str) -> float:
        """The median of a group known to have measured key (callers filter on median() first)."""
        values = self.values(key)
        if not values:
            raise ValueError(f"{self.sweep} {self.variant} {self.series} {self.x}: no {key} measured")
        return statistics.median(values)

    def low(self, key: str) -> float | None:
        return min(self.values(key), default=None)

    def high(self, key: str) -> float | None:
        return max(self.values(key), default=None)

    def total(self, key: str) -> float | None:
        values = self.values(key)
        return sum(values) if values else None

    @property
    def status(self) -> str:
        statuses = {p.status for p in self.points}
        if statuses == {model.OK}:
            return model.OK
        if statuses == {model.SKIPPED}:
            return model.SKIPPED
        return "partial" if model.OK in statuses else model.FAILED

    @property
    def reasons(self) -> list[str]:
        """Each distinct reason a repetition was skipped or failed, with its count when more than one."""
        counts = Counter((p.status, p.reason or "no reason recorded") for p in self.points if not p.ok)
        return [f"{status}: {reason}" + (f" (×{n})" if n > 1 else "") for (status, reason), n in counts.items()]

    @property
    def flags(self) -> list[str]:
        names = {name for p in self.ok for name, on in p.flags.items() if on}
        return [FLAG_TEXT.get(name, name.replace("_", " ")) for name in sorted(names)]

    def flagged(self, name: str) -> bool:
        return any(p.flags.get(name) for p in self.ok)

    def mostly_flagged(self, name: str) -> bool:
        """Whether most of the measured repetitions hold the flag."""
        return sum(bool(p.flags.get(name)) for p in self.ok) * 2 > len(self.ok)

    def server_interference(self) -> list[model.Interference]:
        """The server's CPUs' interference of each measured repetition that has one."""
        return [p.interference[model.SERVER_CPUS] for p in self.ok
                if isinstance(p.interference, dict) and model.SERVER_CPUS in p.interference]

    def kept_p99(self) -> float | None:
        """The median over the repetitions of the p99 without the third parties' stretches (model.Tail.kept);
        None where no repetition has it."""
        values = [p.tail.kept.p99 for p in self.ok if isinstance(p.tail, model.Tail) and p.tail.kept is not None]
        return statistics.median(values) if values else None

    @property
    def host_max(self) -> bool:
        return any(p.host_max for p in self.points)

    @property
    def loads(self) -> str:
        """The load generator of these points."""
        return ", ".join(sorted({p.load or "–" for p in self.points}))

    @property
    def bottleneck(self) -> str:
        """Whose CPU ran out while the load ran, by the saturation flags of the measured repetitions."""
        flags = [p.flags for p in self.ok]
        if not any(checks.SERVER_SATURATED in f or checks.CLIENT_SATURATED in f for f in flags):
            return "–"
        sides = [side for side in ("client", "server") if self.flagged(f"{side}_saturated")]
        return " and ".join(sides) + " CPU" if sides else "neither CPU"


@dataclass
class RunData:
    run: Run
    record: RunRecord
    points: list[Point]
    groups: dict[tuple[str, str, Series, int], Group]
    # The overlapping levels of holders series measured without holders (Point.overlap): beside their
    # series, never on its line.
    overlaps: list[Point] = field(default_factory=list)

    @property
    def plan(self) -> Plan:
        return self.record.plan

    @property
    def metadata(self) -> dict:
        return self.record.metadata

    def kernels(self) -> list[str]:
        """The kernels the points were measured on, by name, in the order of the plan's --kernels ("": the
        host's own)."""
        return self._ordered({p.series.kernel for p in self.points}, self.plan.kernel_names())

    @property
    def emulated(self) -> bool:
        """Whether a point was measured in a guest whose CPU QEMU emulated (TCG): its numbers are the
        emulator's as much as the kernel's."""
        return any((p.guest or {}).get("accelerator") == TCG for p in self.points)

    def _ordered(self, found: set, preferred) -> list:
        return [x for x in preferred if x in found] + sorted(found - set(preferred))

    def sweeps(self) -> list[str]:
        return self._ordered({k[0] for k in self.groups}, model.SWEEPS)

    def variants(self, sweep: str) -> list[str]:
        return self._ordered({k[1] for k in self.groups if k[0] == sweep}, VARIANT_ORDER)

    def planned_lines(self, sweep: str) -> list[Series]:
        """The sweep's planned lines: the dead sweeps' series (every server's backends), pipetest's backends
        with each token walk; each line on every kernel of the plan in turn, so that a backend's lines on
        the kernels stand together."""
        kernels = self.plan.kernel_names()
        if sweep in model.DEAD_SWEEPS:
            return [s.on(k) for s in self.plan.series for k in kernels]
        return [Series(catalog.DEFAULT_SERVER, b, w, k) for w in self.plan.walks for b in self.plan.backends
                for k in kernels]

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
    overlaps = [p for p in points if p.overlap]
    for point in points:
        if point.overlap:
            continue
        key = (point.sweep, point.variant, point.series, point.x)
        groups.setdefault(key, Group(*key)).points.append(point)
    for group in groups.values():
        group.points.sort(key=lambda p: (p.repetition, p.id))
    return RunData(run=run, record=record, points=points, groups=groups, overlaps=overlaps)


def legend_lines() -> list[Series]:
    """ephttpd's backends, each in its style, for the colour legends."""
    return [Series(catalog.DEFAULT_SERVER, name) for name in catalog.EPHTTPD_BACKENDS]


@cache
def reference() -> dict:
    """The 2002 published numbers shipped in the package (experiment/data/lse-2002.json)."""
    return json.loads(resources.files("experiment").joinpath("data", REFERENCE_FILE).read_text())


def reference_max(sweep: str) -> int:
    block = reference()[REFERENCE_KEY[sweep]]
    return max(int(x) for series in block["series"].values() for x, _ in series)

"""The report's "Where the time goes" section: from each dead point's anatomy and memory entries,
server CPU per reply split by category (a stacked bar per dead level, one group per backend), the system
calls and context switches per reply, and the memory per dead connection per backend; or why the run has
none (it predates the anatomy, ran with --no-anatomy, or perf could not run: the points' reasons).

Repetitions are combined as elsewhere in the report: the median over the repetitions that measured it.
A category's CPU per reply is its share of the window's profile times the point's own server CPU per reply
(the headline measurement, taken without instruments).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..anatomy.fold import CATEGORIES
from ..catalog import Series
from ..model import DEAD, AnatomyFigures, MemoryFigures, Point, Unavailable
from . import draw
from .data import Group, RunData
from .plots import FigureRow
from .text import number

CATEGORY_TEXT = {"readiness_scan": "readiness scan", "wait_sched": "waiting, scheduling",
                 "tcp_receive": "TCP receive", "tcp_send": "TCP send (loopback delivery included)",
                 "syscall_entry": "syscall entry/exit", "user": "user space", "other": "other kernel"}
CATEGORY_COLOURS = {"readiness_scan": "#d62728", "wait_sched": "#9467bd", "tcp_receive": "#1f77b4",
                    "tcp_send": "#2ca02c", "syscall_entry": "#ff7f0e", "user": "#8c564b", "other": "#7f7f7f"}
# The system calls of a reply, grouped (recv and send appear as recvfrom and sendto).
SYSCALL_GROUPS = {
    "recv": ("recvfrom", "recvmsg", "read"),
    "send": ("sendto", "sendmsg", "write", "writev"),
    "wait": ("poll", "ppoll", "select", "pselect6", "epoll_wait", "epoll_pwait", "epoll_pwait2", "io_uring_enter",
             "io_submit", "io_getevents", "io_pgetevents"),
    "accept": ("accept", "accept4"),
}
# The slab caches a memory bar names; the rest of kernel_bytes_per_dead is "other slab".
MEMORY_PARTS = {"TCP sockets": ("TCP",), "files, inodes, dentries": ("filp", "sock_inode_cache", "dentry"),
                "eventpoll_epi line": ("eventpoll_epi",)}
MEMORY_COLOURS = {"TCP sockets": "#1f77b4", "files, inodes, dentries": "#2ca02c", "eventpoll_epi line": "#d62728",
                  "other slab": "#7f7f7f"}
WINDOW_TEXT = ("The instruments ran in a window of their own after each point's headline measurement, under a "
               "second run of the same load generator, so the headline figures are never perturbed by them: "
               "first perf record (cpu-clock, call chains) on every process of the server's container, then "
               "perf stat on its syscall tracepoints.")


@dataclass
class AnatomySection:
    """What the report says under "Where the time goes"."""

    status: str  # "measured", or the one line saying why there is nothing
    cpu: dict = field(default_factory=dict)       # table: columns, rows
    syscalls: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    unavailable: list[str] = field(default_factory=list)  # the points' reasons, with counts
    rows: list[FigureRow] = field(default_factory=list)
    window: str = WINDOW_TEXT

    @property
    def measured(self) -> bool:
        return self.status == "measured"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _of(group: Group, value: Callable[[AnatomyFigures], float | None]) -> float | None:
    return _median([v for p in group.ok if isinstance(p.anatomy, AnatomyFigures)
                    and (v := value(p.anatomy)) is not None])


def _mem(group: Group, value: Callable[[MemoryFigures], float | None]) -> float | None:
    return _median([v for p in group.ok if isinstance(p.memory, MemoryFigures)
                    and (v := value(p.memory)) is not None])


def _grouped(figures: AnatomyFigures, names: tuple[str, ...]) -> float | None:
    """The system calls per reply of names; None where they were not counted (syscalls_unavailable)."""
    if figures.syscalls_per_reply is None:
        return None
    return sum(figures.syscalls.get(n) or 0.0 for n in names)


def _grouped_by(names: tuple[str, ...]) -> Callable[[AnatomyFigures], float | None]:
    return lambda figures: _grouped(figures, names)


def _other_syscalls(figures: AnatomyFigures) -> float | None:
    if figures.syscalls_per_reply is None:
        return None
    named = {n for names in SYSCALL_GROUPS.values() for n in names}
    return sum(v or 0.0 for n, v in figures.syscalls.items() if n not in named)


def _category_us(group: Group, category: str) -> float | None:
    """The category's CPU per reply: its profile share times the point's own server CPU per reply."""
    values = []
    for p in group.ok:
        cost = getattr(p.figures, "server_cpu_us_per_reply", None)
        if isinstance(p.anatomy, AnatomyFigures) and p.anatomy.cpu_share and cost:
            values.append(p.anatomy.cpu_share.get(category, 0.0) * cost)
    return _median(values)


def _memory_parts(m: MemoryFigures) -> dict[str, float]:
    parts = {name: sum(m.slab_bytes_per_dead.get(c, 0.0) for c in caches) for name, caches in MEMORY_PARTS.items()}
    parts["other slab"] = (m.kernel_bytes_per_dead or 0.0) - sum(parts.values())
    return parts


def _reason(point: Point) -> str | None:
    """Why a point's anatomy, its memory or its system call counts are missing (None: nothing is)."""
    for entry in (point.anatomy, point.memory):
        if isinstance(entry, Unavailable):
            return entry.reason
    if isinstance(point.anatomy, AnatomyFigures) and point.anatomy.syscalls_unavailable:
        return f"system calls not counted: {point.anatomy.syscalls_unavailable}"
    return None


def section(data: RunData) -> AnatomySection | None:
    """The section, or None for a run without a dead sweep."""
    if DEAD not in data.sweeps():
        return None
    if data.plan.anatomy is None:
        return AnatomySection("Anatomy unavailable: this run predates the kernel cost anatomy (its points were "
                              "measured before epollbench had it).")
    if data.plan.anatomy is False:
        return AnatomySection("Anatomy not measured: the run was started with --no-anatomy.")
    dead = [p for p in data.points if p.sweep == DEAD and p.ok]
    reasons = Counter(r for p in dead if (r := _reason(p)))
    unavailable = [f"{r} (×{n})" if n > 1 else r for r, n in reasons.most_common()]
    groups = [g for g in data.all_groups(DEAD) if any(isinstance(p.anatomy, AnatomyFigures) for p in g.ok)]
    memory_groups = [g for g in data.all_groups(DEAD)
                     if any(isinstance(p.memory, MemoryFigures) for p in g.ok)]
    if not groups and not memory_groups:
        return AnatomySection("Anatomy unavailable at every dead point: " + "; ".join(unavailable or
                                                                                      ["no point measured"]) + ".",
                              unavailable=unavailable)
    result = AnatomySection("measured", unavailable=unavailable)
    result.cpu = {"columns": ["variant", "backend", "dead", "server CPU per reply [µs]",
                              *[f"{CATEGORY_TEXT[c]} [µs]" for c in CATEGORIES], "samples"],
                  "rows": [[g.variant.upper(), g.series, f"{g.x:,}",
                            number(g.median("server_cpu_us_per_reply"), 1),
                            *[number(_category_us(g, c), 2) for c in CATEGORIES],
                            number(_of(g, lambda a: a.samples))] for g in groups]}
    result.syscalls = {"columns": ["variant", "backend", "dead", "syscalls per reply",
                                   *[f"{name} per reply" for name in SYSCALL_GROUPS], "other per reply",
                                   "context switches per reply", "voluntary", "involuntary", "replies counted"],
                       "rows": [[g.variant.upper(), g.series, f"{g.x:,}",
                                 number(_of(g, lambda a: a.syscalls_per_reply), 3),
                                 *[number(_of(g, _grouped_by(names)), 3) for names in SYSCALL_GROUPS.values()],
                                 number(_of(g, _other_syscalls), 3),
                                 number(_of(g, lambda a: a.context_switches_per_reply), 4),
                                 number(_of(g, lambda a: a.context_switches.get("voluntary")), 4),
                                 number(_of(g, lambda a: a.context_switches.get("involuntary")), 4),
                                 number(_of(g, lambda a: a.replies.get("counting")))] for g in groups]}
    stepped = [g for g in memory_groups if _mem(g, lambda m: m.kernel_bytes_per_dead) is not None]
    result.memory = {"columns": ["variant", "backend", "dead (from)", "kernel bytes per dead", "TCP objects per dead",
                                 "eventpoll_epi objects per dead", "server's epoll watches per dead",
                                 "mechanism bytes per dead", "server RSS [MiB]"],
                     "rows": [[g.variant.upper(), g.series, f"{g.x:,} ({_from(g)})",
                               number(_mem(g, lambda m: m.kernel_bytes_per_dead)),
                               number(_mem(g, lambda m: m.slab_objects_per_dead.get("TCP")), 2),
                               number(_mem(g, lambda m: m.slab_objects_per_dead.get("eventpoll_epi")), 2),
                               number(_mem(g, lambda m: m.watches_per_dead), 2),
                               number(_mem(g, lambda m: m.mechanism_bytes_per_dead)),
                               number(_rss_mib(g), 1)] for g in memory_groups]}
    text = captions()
    if cpu := _cpu_plots(data, groups):
        result.rows.append(FigureRow("Server CPU per reply by category, at each dead level", text["cpu"],
                                     list(cpu)))
    if memory := _memory_plots(data, stepped):
        result.rows.append(FigureRow("Kernel memory per dead connection", text["memory"], list(memory)))
    return result


def _from(group: Group) -> str:
    levels = next((p.memory.dead_levels for p in group.ok if isinstance(p.memory, MemoryFigures)
                   and p.memory.dead_levels), None)
    return f"from {levels[0]:,}" if levels else "first level: RSS only"


def _rss_mib(group: Group) -> float | None:
    rss = _mem(group, lambda m: m.server_rss_bytes)
    return rss / 2**20 if rss is not None else None


def _lines(data: RunData, groups: list[Group], variant: str) -> list[Series]:
    present = {g.series for g in groups if g.variant == variant}
    return [s for s in data.lines(DEAD, variant) if s in present]


def _cpu_plots(data: RunData, groups: list[Group]) -> list[draw.StackedBars]:
    plots = []
    for variant in data.variants(DEAD):
        bars = []
        for series in _lines(data, groups, variant):
            for g in (g for g in groups if g.variant == variant and g.series == series):
                parts = {CATEGORY_TEXT[c]: _category_us(g, c) for c in CATEGORIES}
                if any(v is not None for v in parts.values()):
                    bars.append(draw.Bar(series.label, f"{g.x:,}", {k: v or 0.0 for k, v in parts.items()}))
        if bars:
            plots.append(draw.StackedBars(
                name=f"dead-anatomy-cpu-{variant}", title=f"{variant.upper()}: server CPU per reply by category",
                ylabel="server CPU per reply [µs]", xlabel="dead connections, grouped by backend", bars=bars,
                colours={CATEGORY_TEXT[c]: CATEGORY_COLOURS[c] for c in CATEGORIES}))
    return plots


def _memory_plots(data: RunData, groups: list[Group]) -> list[draw.StackedBars]:
    bars = []
    for variant in data.variants(DEAD):
        for series in _lines(data, groups, variant):
            steps = [p.memory for g in groups if g.variant == variant and g.series == series for p in g.ok
                     if isinstance(p.memory, MemoryFigures) and p.memory.kernel_bytes_per_dead is not None]
            if steps:
                parts = [_memory_parts(m) for m in steps]
                bars.append(draw.Bar(variant.upper(), series.label,
                                     {k: statistics.median(p[k] for p in parts) for k in MEMORY_COLOURS}))
    if not bars:
        return []
    return [draw.StackedBars(name="dead-anatomy-memory", title="Kernel slab per dead connection (both ends)",
                             ylabel="bytes per dead connection", xlabel="backend, grouped by variant", bars=bars,
                             colours=MEMORY_COLOURS)]


def captions() -> dict[str, str]:
    return {
        "cpu": ("Each bar: one dead level; its height the point's server CPU per reply (the headline measurement), "
                "split by the share of each category in the window's cpu-clock profile. A sample's category is "
                "decided by its call chain (experiment/anatomy/fold.py): the readiness scan is the mechanism's "
                "own work (poll's and select's scan of every descriptor, epoll's ready list); on loopback a send "
                "runs the peer's receive, counted as TCP send."),
        "memory": ("Median over the dead steps of each backend of the system-wide slab growth per dead connection "
                   "(/proc/slabinfo right before and after each deadconn step): both ends of each connection live "
                   "in this kernel, so it holds deadconn's socket and file as well as the server's. The "
                   "eventpoll_epi line holds the server's epoll watch (one per connection under epoll, none "
                   "under poll) and deadconn's own, and on kernels that merge caches other caches' objects too "
                   "(the point's memory.merged_caches). Documentation/admin-guide/sysctl/fs.rst gives ~160 bytes "
                   "per epoll watch; the mechanism bytes column counts the server's own watches from its epoll's "
                   "fdinfo times the eventpoll_epi object size."),
    }

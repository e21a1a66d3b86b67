"""What a point is expected to take: the dry run's estimate and the progress ETA both go by these.

A point's seconds are its load's duration plus what comes with it: httperf's probe before each dead point,
the container starts, and the anatomy's window after a dead point's measurement (a second run of the load
generator, beside deadconn, under perf). A series adds its server's start, and each dead level the opening
of its step of dead connections. The constants are the wall times the reference runs show on the 2-core
development machine; only their proportions matter to the ETA, which scales them by what the points
measured so far took.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import catalog
from ..model import DEAD, DEAD_OPEN, PIPETEST, Plan
from . import pipetest
from .plan import Level, planned

# Seconds a point takes beyond its load, by its load (httperf's and pipetest's from the committed paper runs:
# README, --dry-run).
POINT_OVERHEAD_S = {catalog.HTTPERF: 2.0, catalog.WRK: 1.0, catalog.OPEN: 1.5, PIPETEST: 1.0}
# What the anatomy adds to a dead point (its window, the slab snapshots, the fold after the sweep), as bench
# item 8 measures it.
ANATOMY_S = 1.5
SERIES_START_S = 3.0
# deadconn opens about this many dead connections a second (loopback untracked), as in the paper run.
OPENED_PER_S = 6000.0
# The open loop's capacity probe: a server and PROBE_S of wrk per line and variant.
OPEN_PROBE_S = 4.0
# A --kernels run's guests, until one has run on this host (the dry run then goes by its timings): measuring in
# a TCG guest took 2.4x its native time (README, Kernels side by side: 12 points at --duration 4, 144 s and 143 s
# in the guest against 59 s and 61 s natively, on the 2-core development machine), and a guest's boot until its
# dockerd answered 32-46 s, its clock check 3 s more.
GUEST_SLOWDOWN = 2.4
GUEST_BOOT_S = 45.0


def point_s(plan: Plan, sweep: str) -> float:
    """Seconds one point of the sweep is expected to take, its step of dead connections not included."""
    if sweep == DEAD:
        return plan.duration_s + POINT_OVERHEAD_S[plan.load] + (ANATOMY_S if plan.anatomy else 0.0)
    if sweep == DEAD_OPEN:
        return plan.open_duration_s + POINT_OVERHEAD_S[catalog.OPEN]
    if sweep == PIPETEST:
        return pipetest.PIPETEST_SECONDS + POINT_OVERHEAD_S[PIPETEST]
    raise ValueError(f"unknown sweep {sweep!r}")


def line_s(plan: Plan, sweep: str, levels: Sequence[Level]) -> list[float]:
    """Seconds each level of one line is expected to take, in the order a run measures them (0 for a skipped
    one). A dead line starts its server before its first level and opens each level's step of dead
    connections; its overlapping level (a holders line measured without them) does both once more."""
    seconds = []
    opened: dict[bool, int] = {}  # by level.overlap: the dead connections its server holds so far
    for level in levels:
        if level.skip_reason:
            seconds.append(0.0)
            continue
        took = point_s(plan, sweep)
        if sweep != PIPETEST:
            if level.overlap not in opened:
                took += SERIES_START_S
            took += max(0, level.value - opened.get(level.overlap, 0)) / OPENED_PER_S
            opened[level.overlap] = level.value
        seconds.append(took)
    return seconds


def expected_seconds(plan: Plan, fd_limit: int) -> dict[str, float]:
    """The seconds each point the plan measures is expected to take (line_s), by point id."""
    return {line.point_id(level): seconds
            for line in planned(plan, fd_limit)
            for level, seconds in zip(line.levels, line_s(plan, line.sweep, line.levels), strict=True)
            if not level.skip_reason}

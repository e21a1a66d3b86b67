"""`invoke reproduce --dry-run`: what a run of this plan would do, without building or starting anything.

Per sweep, variant and line: the levels it would measure and those it would skip and why, under the fd limit
this process may raise its own to (the engine's, probed when the run starts, is the same for a local engine;
a remote one's may differ, and the run adapts to it). The expected wall time comes from the last complete
run of the same plan on this host when there is one, else from the plan's durations with the overheads the
committed reference runs show (durations.py).
"""

from __future__ import annotations

import resource
import socket
from collections.abc import Callable
from pathlib import Path

from .. import model
from ..errors import UserError
from ..model import DEAD_OPEN, PIPETEST, Plan
from . import durations
from .plan import Level, count_points, planned


def local_fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def lines(plan: Plan, fd_limit: int) -> list[tuple[str, str, str, tuple[Level, ...]]]:
    """(sweep, variant, line label, its levels): one row per line of planned() and its repetitions, in the
    order the run first measures each."""
    rows: dict[tuple[str, str, str], tuple[Level, ...]] = {}
    for line in planned(plan, fd_limit):
        # A pipetest row names its walk even when it stays, which a figure's legend leaves unsaid.
        label = f"{line.series.backend} ({line.series.walk})" if line.sweep == PIPETEST else line.series.label
        rows.setdefault((line.sweep, line.variant, label), line.levels)
    return [(sweep, variant, label, levels) for (sweep, variant, label), levels in rows.items()]


def estimate_s(plan: Plan, fd_limit: int) -> float:
    """Seconds of measuring from the plan's durations (images and report not included)."""
    # The open loop's capacity probe: one per line and variant, unless the plan gives the rate.
    probes = len(plan.series) * len(plan.open_variants) if DEAD_OPEN in plan.sweeps and plan.open_rate is None else 0
    return sum(durations.expected_seconds(plan, fd_limit).values()) + probes * durations.OPEN_PROBE_S


def previous(plan: Plan, results_dir: Path) -> model.RunRecord | None:
    """The last complete run of this very plan on this host, if any."""
    host = socket.gethostname()
    found = []
    for path in results_dir.glob("*/run.json"):
        try:
            record = model.read_run(path)
        except UserError:
            continue
        if record.status == "complete" and record.plan == plan and record.metadata.get("hostname") == host \
                and record.timings.get("measuring_s"):
            found.append(record)
    return max(found, key=lambda r: r.started_at, default=None)


def describe(plan: Plan, results_dir: Path, say: Callable[[str], None] = print,
             fd_limit: int | None = None) -> int:
    """Prints the plan, each line's levels and skips, the point count and the expected time; returns the count
    of points the run would record."""
    fd_limit = fd_limit if fd_limit is not None else local_fd_limit()
    say(f"plan {plan.profile}: sweeps {', '.join(plan.sweeps)}; variants {', '.join(plan.variants)}; "
        f"{plan.repeat} repetition(s); {plan.duration_s:g} s of {plan.load} per dead point")
    if DEAD_OPEN in plan.sweeps:
        rate = (f"{plan.open_rate:g} requests/s" if plan.open_rate is not None
                else f"{plan.open_rate_share:g} x the lowest capacity at 0 dead (wrk probe before the first point)")
        say(f"open loop ({DEAD_OPEN}): variants {', '.join(plan.open_variants)}; {plan.open_duration_s:g} s of "
            f"openload per point at {rate}, {plan.open_connections} connections")
    say(f"fd limit {fd_limit} (this host's hard limit; the run uses its engine's)")
    for sweep, variant, label, levels in lines(plan, fd_limit):
        run = [f"{lv.value:,}" + (" (host max)" if lv.host_max else "") + (" (direct)" if lv.overlap else "")
               for lv in levels if not lv.skip_reason]
        skipped = [lv for lv in levels if lv.skip_reason]
        holders = max((lv.holders for lv in levels), default=0)
        through = f" (dead connections held by {holders} helper processes)" if holders else ""
        text = f"{sweep} {variant.upper()} {label}{through}: {', '.join(run) or 'nothing'}"
        if skipped:
            text += (f"; skips {', '.join(f'{lv.value:,}' for lv in skipped)} "
                     f"({skipped[0].skip_reason})")
        say(text)
    total, skipped_count = count_points(plan, fd_limit), count_points(plan, fd_limit, skipped=True)
    say(f"points: {total} ({total - skipped_count} measured, {skipped_count} recorded as skipped)")
    before = previous(plan, results_dir)
    if before is not None:
        seconds = sum(before.timings.get(k, 0.0) for k in ("images_s", "setup_s", "measuring_s", "report_s"))
        say(f"expected wall time: {_minutes(seconds)}, as the last run of this plan here took ({before.run_id})")
    else:
        say(f"expected wall time: {_minutes(estimate_s(plan, fd_limit))} of measuring from the plan's durations, "
            "plus the image build when the images are not built yet")
    return total


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"

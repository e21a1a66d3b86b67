"""`invoke reproduce --dry-run`: what a run of this plan would do, without building or starting anything.

Per sweep, variant and line: the levels it would measure and those it would skip and why, under the fd limit
this process may raise its own to (the engine's, probed when the run starts, is the same for a local engine;
a remote one's may differ, and the run adapts to it). The expected wall time comes from the last complete
run of the same plan on this host when there is one, else from the plan's durations with the overheads the
committed reference runs show (durations.py).

A run in guests (--kernels) is said per kernel: what each item resolves to as far as the cache tells (a dry
run fetches nothing), the guests it boots, the levels under the guests' own fd limit, and each kernel's
expected time: its guests' boots and their lines' native estimate scaled by how the last run with guests on
this host went, else by the slowdown measured on the development machine (durations.GUEST_SLOWDOWN).
"""

from __future__ import annotations

import resource
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from .. import model
from ..errors import UserError
from ..guest import apt
from ..model import DEAD_OPEN, PIPETEST, Plan
from . import durations, guests
from .guests import GUEST_FD_LIMIT
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
        if line.sweep == PIPETEST and line.kernel:
            label += f" on {line.kernel}"
        rows.setdefault((line.sweep, line.variant, label), line.levels)
    return [(sweep, variant, label, levels) for (sweep, variant, label), levels in rows.items()]


def estimate_s(plan: Plan, fd_limit: int) -> float:
    """Seconds of measuring from the plan's durations (images and report not included)."""
    # The open loop's capacity probe: one per line and variant, unless the plan gives the rate.
    probes = len(plan.series) * len(plan.open_variants) if DEAD_OPEN in plan.sweeps and plan.open_rate is None else 0
    return sum(durations.expected_seconds(plan, fd_limit).values()) + probes * durations.OPEN_PROBE_S


def _runs_here(results_dir: Path) -> Iterator[model.RunRecord]:
    """The run records under results_dir that this host ran (those that cannot be read left out)."""
    host = socket.gethostname()
    for path in results_dir.glob("*/run.json"):
        try:
            record = model.read_run(path)
        except UserError:
            continue
        if record.metadata.get("hostname") == host:
            yield record


def previous(plan: Plan, results_dir: Path) -> model.RunRecord | None:
    """The last complete run of this very plan on this host, if any."""
    found = [record for record in _runs_here(results_dir)
             if record.status == "complete" and record.plan == plan and record.timings.get("measuring_s")]
    return max(found, key=lambda r: r.started_at, default=None)


@dataclass(frozen=True)
class GuestPace:
    """How measuring in guests goes: seconds per second of the native estimate, a guest's boot, and where both
    were taken from."""

    slowdown: float
    boot_s: float
    source: str


def native_per_guest(plan: Plan) -> dict[str, float]:
    """The native estimate (durations) of each guest's lines, by guest label: what its measuring is scaled from.
    Without the anatomy, which a guest does not take (steps._no_anatomy)."""
    natively, lines = replace(plan, anatomy=False), planned(plan, GUEST_FD_LIMIT)
    return {shape.label: sum(sum(durations.line_s(natively, line.sweep, line.levels))
                             for line in lines if shape.measures(line))
            for shape in guests.shapes(plan)}


def _timed_guests(record: model.RunRecord) -> dict[str, dict]:
    """The guests a run timed (guests.measure_in_guests): those that failed, or had nothing left to measure,
    have no times."""
    return {label: taken for label, taken in (record.timings.get("guests") or {}).items()
            if "boot_s" in taken and "measuring_s" in taken}


def guest_pace(results_dir: Path) -> GuestPace:
    """As the last run on this host that timed guests went (its guests' measuring against their lines' native
    estimate, their mean boot), else the slowdown and boot measured on the development machine."""
    timed_runs = [record for record in _runs_here(results_dir) if record.plan.kernels and _timed_guests(record)]
    before = max(timed_runs, key=lambda r: r.started_at, default=None)
    if before is not None:
        timed, native = _timed_guests(before), native_per_guest(before.plan)
        estimated = sum(native.get(label, 0.0) for label in timed)
        if estimated > 0:
            slowdown = sum(taken["measuring_s"] for taken in timed.values()) / estimated
            boot_s = sum(taken["boot_s"] for taken in timed.values()) / len(timed)
            under = sorted({facts.get("accelerator") or "?" for label, facts in
                            (before.metadata.get("guests") or {}).items() if label in timed})
            return GuestPace(slowdown, boot_s, f"as the last run with guests here went ({before.run_id}, under "
                             f"{'/'.join(under) or '?'}): {slowdown:.1f}x the native estimate, {boot_s:.0f} s of boot "
                             "per guest")
    return GuestPace(durations.GUEST_SLOWDOWN, durations.GUEST_BOOT_S,
                     f"no run with guests here yet: {durations.GUEST_SLOWDOWN:g}x the native estimate and "
                     f"{durations.GUEST_BOOT_S:.0f} s of boot per guest, as measured under TCG on the 2-core "
                     "development machine (README, Kernels side by side)")


def guest_seconds(plan: Plan, pace: GuestPace) -> dict[str, tuple[int, float, float]]:
    """Per kernel (by name): its guests, their seconds of booting and of measuring."""
    native = native_per_guest(plan)
    found = {}
    for kernel in plan.kernel_names():
        mine = [shape.label for shape in guests.shapes(plan) if shape.kernel == kernel]
        found[kernel] = (len(mine), len(mine) * pace.boot_s, pace.slowdown * sum(native[label] for label in mine))
    return found


def describe(plan: Plan, results_dir: Path, say: Callable[[str], None] = print,
             fd_limit: int | None = None) -> int:
    """Prints the plan, each line's levels and skips, the point count and the expected time; returns the count
    of points the run would record. A run in guests says its kernels and guests too, under their fd limit."""
    if fd_limit is None:
        fd_limit = GUEST_FD_LIMIT if plan.kernels else local_fd_limit()
    say(f"plan {plan.profile}: sweeps {', '.join(plan.sweeps)}; variants {', '.join(plan.variants)}; "
        f"{plan.repeat} repetition(s); {plan.duration_s:g} s of {plan.load} per dead point")
    if DEAD_OPEN in plan.sweeps:
        rate = (f"{plan.open_rate:g} requests/s" if plan.open_rate is not None
                else f"{plan.open_rate_share:g} x the lowest capacity at 0 dead (wrk probe before the first point)")
        say(f"open loop ({DEAD_OPEN}): variants {', '.join(plan.open_variants)}; {plan.open_duration_s:g} s of "
            f"openload per point at {rate}, {plan.open_connections} connections")
    if plan.kernels:
        _describe_guests(plan, say)
        say(f"fd limit {fd_limit} (the guests' open-file limit, whatever this host's)")
    else:
        say(f"fd limit {fd_limit} (this host's hard limit; the run uses its engine's)")
    for sweep, variant, label, levels in lines(plan, fd_limit):
        say(_line_text(sweep, variant, label, levels))
    total, skipped_count = count_points(plan, fd_limit), count_points(plan, fd_limit, skipped=True)
    say(f"points: {total} ({total - skipped_count} measured, {skipped_count} recorded as skipped)")
    if plan.kernels:
        _say_guest_time(plan, results_dir, say)
        return total
    before = previous(plan, results_dir)
    if before is not None:
        seconds = sum(before.timings.get(k, 0.0) for k in ("images_s", "setup_s", "measuring_s", "report_s"))
        say(f"expected wall time: {_minutes(seconds)}, as the last run of this plan here took ({before.run_id})")
    else:
        say(f"expected wall time: {_minutes(estimate_s(plan, fd_limit))} of measuring from the plan's durations, "
            "plus the image build when the images are not built yet")
    return total


def _line_text(sweep: str, variant: str, label: str, levels: tuple[Level, ...]) -> str:
    """One line's row: the levels it measures, and those it skips and why."""
    run = [f"{lv.value:,}" + (" (host max)" if lv.host_max else "") + (" (direct)" if lv.overlap else "")
           for lv in levels if not lv.skip_reason]
    skipped = [lv for lv in levels if lv.skip_reason]
    holders = max((lv.holders for lv in levels), default=0)
    through = f" (dead connections held by {holders} helper processes)" if holders else ""
    text = f"{sweep} {variant.upper()} {label}{through}: {', '.join(run) or 'nothing'}"
    if skipped:
        text += f"; skips {', '.join(f'{lv.value:,}' for lv in skipped)} ({skipped[0].skip_reason})"
    return text


def _describe_guests(plan: Plan, say: Callable[[str], None]) -> None:
    """The kernels as the cache tells (fetching nothing), and the guests in the order they boot, with what each
    measures."""
    age = apt.lists_age_s()
    lists = f"the private apt lists of {_hours(age)} ago, which a run updates when a day old" if age is not None \
        else "no private apt lists yet: a run fetches them"
    say(f"kernels (--accel {plan.accel}; {lists}):")
    for name, found in guests.cached_kernels(plan).items():
        say(f"  {name}: {guests.describe_kernel(found)}")
    planned_lines = planned(plan, GUEST_FD_LIMIT)
    booted = []
    for shape in guests.shapes(plan):
        measures = dict.fromkeys(f"{line.sweep} {line.variant.upper()}" for line in planned_lines
                                if shape.measures(line))
        booted.append(f"{shape.label} ({', '.join(measures)})")
    say(f"guests, one at a time ({guests.GUEST_MEMORY_MB} MiB each): {'; '.join(booted)}")


def _say_guest_time(plan: Plan, results_dir: Path, say: Callable[[str], None]) -> None:
    """Each kernel's expected time, where its pace comes from, and the whole run's."""
    pace = guest_pace(results_dir)
    per_kernel = guest_seconds(plan, pace)
    say(f"expected time per kernel ({pace.source}):")
    for kernel, (count, boot_s, measuring_s) in per_kernel.items():
        say(f"  {kernel}: {_minutes(boot_s + measuring_s)} ({count} guest(s): {_minutes(boot_s)} booting, "
            f"{_minutes(measuring_s)} measuring)")
    total = sum(boot_s + measuring_s for _count, boot_s, measuring_s in per_kernel.values())
    say(f"expected wall time: {_minutes(total)} in guests, plus the image build and the guests' images disk when "
        "not built yet, and the kernels not fetched yet")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.0f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"

"""Interference where perf cannot record the switches (no perf, no tracefs, not root): third parties' share of
a set of CPUs from two readings of the CPUs' busy time (/proc/stat) and of our tasks' CPU time, as
interference.Interference with the stretch unavailable and the reason.

Third parties' time is the CPUs' busy time that our tasks' own accounting does not cover: the busy jiffies of
the CPUs (user, nice, system, irq, softirq, steal: host/checks.parse_proc_stat) less the CPU time of our
tasks that run there. Only tasks confined to those CPUs can be taken off, since a cgroup's or a process's
CPU time does not say on which CPU it was spent: the caller names the run's containers pinned to the CPUs
(their cgroup's usage: cpu.stat usage_usec on cgroup v2, cpuacct.usage on v1) and the processes pinned
there (/proc/<pid>/stat utime + stime: a native server). Our other tasks that ran there (the harness, the
engine) and the kernel's interrupt work for our traffic then count as third parties': the share is an upper
bound, at the resolution of the kernel's tick accounting (1/USER_HZ per CPU at each reading, 10 ms at 100).
Which third parties, and for how long at a stretch, /proc/stat cannot tell.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import checks
from .interference import PROC_STAT, Interference, interfered

PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")
USER_HZ = os.sysconf("SC_CLK_TCK")
# Where a container's CPU usage is, by cgroup version and driver: the file's pattern (the ID may be a prefix)
# and the nanoseconds of its unit.
USAGE_FILES = (("system.slice/docker-{id}*.scope/cpu.stat", 1000), ("docker/{id}*/cpu.stat", 1000),
               ("cpuacct/docker/{id}*/cpuacct.usage", 1), ("cpu,cpuacct/docker/{id}*/cpuacct.usage", 1),
               ("cpuacct/system.slice/docker-{id}*.scope/cpuacct.usage", 1),
               ("cpu,cpuacct/system.slice/docker-{id}*.scope/cpuacct.usage", 1))


class Unreadable(RuntimeError):
    """One of our tasks' CPU time could not be read: the share would count it as a third party's."""


def container_usage_s(container_id: str, root: Path = CGROUP_ROOT) -> float:
    """A container's CPU time so far, in seconds, from its cgroup; Unreadable when it has none here."""
    for pattern, unit_ns in USAGE_FILES:
        found = sorted(root.glob(pattern.format(id=container_id)))
        if len(found) != 1:
            continue
        text = found[0].read_text()
        if unit_ns == 1:
            return int(text) / 1e9
        usage = dict(line.split() for line in text.splitlines() if line.strip()).get("usage_usec")
        if usage is not None:
            return int(usage) * unit_ns / 1e9
    raise Unreadable(f"no CPU usage of container {container_id[:12]} under {root}")


def process_usage_s(pid: int, proc: Path = PROC) -> float:
    """A process's CPU time so far (all its threads, user and system), in seconds; Unreadable when it is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError as error:
        raise Unreadable(f"no CPU time of process {pid}: {error}") from None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / USER_HZ  # utime, stime: fields 14 and 15 of stat(5)


@dataclass(frozen=True)
class Reading:
    """At at_ns (CLOCK_MONOTONIC): each CPU's busy seconds so far and our pinned tasks' CPU seconds so far."""

    at_ns: int
    busy_s: dict[int, float]
    ours_s: float

    @classmethod
    def take(cls, cpus: Iterable[int], container_ids: Iterable[str] = (), pids: Iterable[int] = (),
             proc: Path = PROC, cgroup_root: Path = CGROUP_ROOT) -> Reading:
        """Reads the CPUs' busy time and our tasks' on them: containers and processes pinned to cpus."""
        ours = sum(container_usage_s(cid, cgroup_root) for cid in container_ids)
        ours += sum(process_usage_s(pid, proc) for pid in pids)
        stat = checks.parse_proc_stat((proc / "stat").read_text())
        busy = {}
        for cpu in cpus:
            if f"cpu{cpu}" not in stat:
                raise Unreadable(f"CPU {cpu} is not in {proc / 'stat'}")
            busy[cpu] = stat[f"cpu{cpu}"].busy / USER_HZ
        return cls(time.monotonic_ns(), busy, ours)


def interference(before: Reading, after: Reading, why_no_stretch: str) -> Interference:
    """Third parties' share of the CPUs of both readings between them; why_no_stretch: why perf could not
    record the switches (the stretch and the names are unavailable)."""
    cpus = sorted(before.busy_s)
    window_s = (after.at_ns - before.at_ns) / 1e9
    if window_s <= 0 or not cpus or sorted(after.busy_s) != cpus:
        raise ValueError("two readings of the same CPUs, the second one later, are needed")
    busy = sum(after.busy_s[cpu] - before.busy_s[cpu] for cpu in cpus)
    third_s = max(0.0, busy - (after.ours_s - before.ours_s))
    share = third_s / (window_s * len(cpus))
    return Interference(interfered(share, None), PROC_STAT, cpus, window_s, third_s, share, None, None,
                        stretch_unavailable=why_no_stretch)

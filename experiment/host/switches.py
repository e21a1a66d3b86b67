"""Who held each CPU when: the scheduler's switches on a set of CPUs (`perf record -e sched:sched_switch`), as
each task's stretches on each CPU.

Each switch on a CPU ends one task's stretch there (prev_comm, prev_pid) and starts the next one's
(next_comm, next_pid), so the switches of one CPU, in time order, cut its time into stretches that each one
task held. The first task seen on a CPU was there before the capture's first switch on it, and the last one
stays after its last: their stretches are open at that end (None), and whoever reads them clips them to a
window.

A switch whose outgoing task is not the one the previous switch put there means perf did not record that
task leaving: the stretch began with it, then the CPU went to others (or idle) at a moment not known, so it
held the CPU for part of the stretch only (end_seen False). perf loses switches when its buffer overflows;
and on some hosts it never records a given task leaving. On the development host, a host agent's threads
(tokio-rt-worker, of its process_api) are seen switched in and never switched out: perf recorded none of the
events it was asked for (switches, wakeups, runtime updates) while one of them was a CPU's current task, and
a sched_switch is recorded in the outgoing task's context. Such a task's stretches are bounded (at most until
the next switch recorded there), never known (tests/data/switches/README.md).

Most switches on a measured point's CPUs are between our programs and the idle task (a server that waits in
epoll_wait between requests switches twice per wakeup). A capture leaves those out in the kernel (quiet(): a
tracepoint filter), so that perf writes, and `perf script` reads, only the switches a third party or the
engine is part of. stretches() is told which switches were left out: a gap between a quiet task's switch-in
and another quiet task's switch-out is then theirs (ours, or no one's), not a stretch whose end was missed.

The capture runs on the CPUs watched (-C) with CLOCK_MONOTONIC timestamps (-k), the clock of
time.monotonic_ns() and of openload's due times, so that a window taken in this process or in openload reads
against it directly. perf's own process is kept on other CPUs (Capture.start's `away`): on the CPUs it
watches it would be one more task in the way. It still visits each of them to enable and to disable the
events there (perf moves itself to a CPU to switch its events on or off), before the window opens and after
it closes.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..anatomy import perf
from .parties import IDLE_PID, PROGRAMS

EVENT = "sched:sched_switch"
# What perf record need not do for a capture of trace points read by their fields: the build IDs of binaries
# (no sample has an address), the BPF programs' side band (its thread delays perf's exit by 0.2-0.7 s here), the
# records of the tasks running at its start (the switches name their tasks).
QUICK = ("--no-buildid", "--no-buildid-cache", "--no-bpf-event", "--synth=no")
SCRIPT_TIMEOUT_S = 120.0  # perf script over a few seconds of switches on a few CPUs: never a measurement
# `perf script --ns -F pid,tid,cpu,time,trace` prints one line per switch, led by the process and thread that were
# current (the outgoing task: its process is known even after it has gone); a comm may hold spaces, hence the
# lazy match. The leading pid/tid is optional, as in captures read without it.
LINE = re.compile(r"\s*(?:(?P<tgid>-?\d+)/-?\d+\s+)?\[(?P<cpu>\d+)\]\s+(?P<s>\d+)\.(?P<frac>\d+):\s+"
                  r"prev_comm=(?P<prev_comm>.*?) prev_pid=(?P<prev_pid>-?\d+) prev_prio=-?\d+ prev_state=\S+ "
                  r"==> next_comm=(?P<next_comm>.*) next_pid=(?P<next_pid>-?\d+) next_prio=-?\d+\s*")


@dataclass(frozen=True, slots=True)
class Switch:
    """One sched_switch: at time_ns, CPU cpu went from the task prev_pid (prev_comm) to next_pid."""

    time_ns: int
    cpu: int
    prev_pid: int
    prev_comm: str
    next_pid: int
    next_comm: str
    prev_tgid: int | None = None  # the outgoing task's process, where perf script printed it


@dataclass(frozen=True, slots=True)
class OnCpu:
    """One task's stretch on one CPU, from start_ns to end_ns (CLOCK_MONOTONIC); None: open at that end (it
    began before the capture's first switch on this CPU, or lasts beyond its last). end_seen False: perf did
    not record the task leaving, so it held the CPU from start_ns for some part of the stretch only."""

    cpu: int
    pid: int
    comm: str
    start_ns: int | None
    end_ns: int | None
    end_seen: bool = True
    tgid: int | None = None  # its process, from the switch that ended it (None: not seen, or not printed)

    def within(self, start_ns: int, end_ns: int) -> int:
        """Its nanoseconds inside [start_ns, end_ns]."""
        begin = start_ns if self.start_ns is None else max(start_ns, self.start_ns)
        end = end_ns if self.end_ns is None else min(end_ns, self.end_ns)
        return max(0, end - begin)


def parse(text: str) -> list[Switch]:
    """The switches of `perf script --ns -F pid,tid,cpu,time,trace` output of sched:sched_switch, in its order.
    A line that is neither blank nor such a switch is a ValueError: perf's format changed, or it is not this
    output."""
    found = []
    lines = text.splitlines()
    for number, match in enumerate(map(LINE.fullmatch, lines), 1):
        if match is None:
            if lines[number - 1].strip():
                raise ValueError(f"not a sched_switch line of `perf script` (line {number}): "
                                 f"{lines[number - 1][:160]!r}")
            continue
        s, frac, cpu, prev_pid, prev_comm, next_pid, next_comm, tgid = match.group(
            "s", "frac", "cpu", "prev_pid", "prev_comm", "next_pid", "next_comm", "tgid")
        found.append(Switch(int(s) * 1_000_000_000 + int(frac.ljust(9, "0")[:9]), int(cpu), int(prev_pid),
                            prev_comm, int(next_pid), next_comm, int(tgid) if tgid is not None else None))
    return found


def quiet(comms: Iterable[str] = PROGRAMS) -> str:
    """The capture's filter: every switch but those between the idle task and the tasks named comms (or between
    two of them), which do not matter to who else held a CPU."""
    def side(which: str) -> str:
        return " && ".join([f"{which}_pid != {IDLE_PID}", *(f'{which}_comm != "{comm}"' for comm in sorted(comms))])

    return f"({side('prev')}) || ({side('next')})"


def stretches(switches: Iterable[Switch], quiet_comms: frozenset[str] = frozenset()) -> list[OnCpu]:
    """Every CPU's time cut into the stretches its tasks held (the module's docstring), by CPU then time.
    quiet_comms: the tasks whose switches to and from the idle task the capture left out (quiet())."""
    def is_quiet(pid: int, comm: str) -> bool:
        return bool(quiet_comms) and (pid == IDLE_PID or comm in quiet_comms)

    by_cpu: dict[int, list[Switch]] = {}
    for switch in sorted(switches, key=lambda s: (s.cpu, s.time_ns)):
        by_cpu.setdefault(switch.cpu, []).append(switch)
    found = []
    for cpu, ordered in by_cpu.items():
        first = ordered[0]
        found.append(OnCpu(cpu, first.prev_pid, first.prev_comm, None, first.time_ns, tgid=first.prev_tgid))
        for before, after in zip(ordered, ordered[1:], strict=False):
            seen = after.prev_pid == before.next_pid or (
                is_quiet(before.next_pid, before.next_comm) and is_quiet(after.prev_pid, after.prev_comm))
            exact = after.prev_pid == before.next_pid
            found.append(OnCpu(cpu, before.next_pid, after.prev_comm if exact else before.next_comm,
                               before.time_ns, after.time_ns, seen, after.prev_tgid if exact else None))
        last = ordered[-1]
        found.append(OnCpu(cpu, last.next_pid, last.next_comm, last.time_ns, None))
    return found


def record_args(cpus: Sequence[int], data: Path, quiet_comms: Iterable[str] = ()) -> list[str]:
    """perf record's arguments for the switches on cpus, into the file data, less those among the idle task and
    the tasks named quiet_comms (quiet())."""
    only = ["--filter", quiet(quiet_comms)] if quiet_comms else []
    return ["-e", EVENT, *only, "-C", ",".join(str(c) for c in cpus), "-k", "CLOCK_MONOTONIC", *QUICK, "-o",
            str(data)]


def script(perf_path: str, data: Path) -> str:
    """`perf script` of a capture, in the form parse() reads; perf.PerfError when it fails."""
    try:
        # No kernel symbols: the switches name their tasks, and reading /proc/kallsyms took 0.1 s of each call.
        proc = subprocess.run([perf_path, "script", "--kallsyms", os.devnull, "-i", str(data), "--ns", "-F",
                               "pid,tid,cpu,time,trace"],
                              capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise perf.PerfError(f"perf script failed to run: {error}") from None
    if proc.returncode != 0:
        raise perf.PerfError(f"perf script exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return proc.stdout


def check(perf_path: str) -> str:
    """"" when perf can record the switches here, else why not (tracefs not mounted, no such tracepoint,
    perf refused)."""
    return perf.check_tracepoints(perf_path, (EVENT,))


@dataclass
class Capture:
    """One capture of the switches on some CPUs, started disabled; open() and close() bound its window, in
    CLOCK_MONOTONIC nanoseconds (start_ns, end_ns): the switches perf recorded cover at least that window."""

    recording: perf.Controlled
    data: Path
    quiet_comms: frozenset[str] = frozenset()
    start_ns: int = 0
    end_ns: int = 0

    @classmethod
    def start(cls, perf_path: str, cpus: Sequence[int], folder: Path, away: Iterable[int] | None,
              quiet_comms: frozenset[str] = PROGRAMS) -> Capture:
        """perf record on cpus, into folder/switches.data, its own process confined to the CPUs away (None: where
        the scheduler puts it, when every CPU is watched), the switches among the idle task and quiet_comms
        left out."""
        data = folder / "switches.data"
        recording = perf.Controlled.start(perf_path, "record", record_args(cpus, data, quiet_comms), cpus=away)
        return cls(recording, data, quiet_comms)

    def open(self) -> None:
        self.recording.command("enable")
        self.start_ns = time.monotonic_ns()  # perf has acknowledged: every switch from now on is recorded

    def close(self) -> None:
        self.end_ns = time.monotonic_ns()  # perf still records until it acknowledges
        self.recording.command("disable")

    def finish(self, perf_path: str) -> list[OnCpu]:
        """Stops perf and reads its switches as stretches; perf.PerfError when it failed."""
        try:
            err = self.recording.stop()
        finally:
            self.recording.cleanup()
        if self.recording.proc.returncode not in (0, -2, 130) or not self.data.exists():
            raise perf.PerfError(f"perf record exited {self.recording.proc.returncode}: {err.strip()[-300:]}")
        return stretches(parse(script(perf_path, self.data)), self.quiet_comms)

"""One anatomy window on a running server under load: where its CPU goes, then its system calls and context
switches per reply, in two phases one after the other.

  profile   `perf record -e cpu-clock -F PROFILE_HZ -g` on every process of the server, into perf.data;
            folded into categories later (fold.py, fold_profile()), after the sweep, so that the sweep does
            not wait on `perf script`. It is started, disabled, before the caller's load (start()): perf
            reads every process's mappings first, and the load's start-up hides that.
  counting  `perf stat` on raw_syscalls:sys_enter (every system call), each of SYSCALLS, and the
            context-switches software event, on every thread of the server's processes; voluntary and
            involuntary switches from /proc/PID/task/*/status deltas. Where the tracepoints cannot be
            counted (tracefs not mounted: host/tracefs.py), the context switches alone, and the anatomy says
            why its system calls are missing.

The phases are sequential because a syscall tracepoint, once perf has registered it, sends every system
call of every task through the slow entry path: the profile would show that as syscall_entry time. Each
phase is half the window. Replies are read from the caller's counter at each phase's edges, inside the
interval in which perf counts (perf acknowledged "enable" before the first read and "disable" after the
second), so the per-reply figures are slightly high by what perf counted while the counter was read.

Each of SYSCALLS is counted, where this machine's system call numbers are known (SYSCALL_NUMBERS), as
raw_syscalls:sys_enter with a filter on its number rather than as its own syscalls:sys_enter_NAME
tracepoint: the counts are the same, but perf stat's exit unregisters each distinct tracepoint after an
RCU grace period of its own, one after the other, and one tracepoint for all of them ends the window
without waiting for twenty-odd grace periods. The price is on the counting phase: every filtered event
tests every system call of the server (bench item 8 measures both). Elsewhere, the tracepoints.
perf record runs with --no-bpf-event: its side-band thread for BPF events would hold its exit for up to a
second; the samples in a BPF program (a container's seccomp filter) are then unnamed, and fold.py puts
them where it put them named (other).

What is not measured: the client's side (only the server's processes are watched), the instruments' own
cost on the server (tracepoint hits while counting, sampling interrupts while profiling: measure it by
comparing CPU per reply with and without a window), and the kernel's work on the server's behalf in other
contexts (softirqs on another CPU, kernel threads).
"""

from __future__ import annotations

import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..model import Unavailable
from . import fold, perf, procs

SYSCALLS = ("recvfrom", "recvmsg", "read", "sendto", "sendmsg", "write", "writev", "poll", "ppoll", "select",
            "pselect6", "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl", "io_uring_enter",
            "io_submit", "io_getevents", "io_pgetevents", "accept", "accept4")
ALL_SYSCALLS = "raw_syscalls:sys_enter"
SYSCALL_EVENT = "syscalls:sys_enter_"  # a system call's tracepoint: this and its name
# SYSCALLS' numbers by machine (uname -m), from the kernel's syscall table (arch/x86/entry/syscalls/syscall_64.tbl:
# a stable ABI); a machine not named here counts them with their own tracepoints.
SYSCALL_NUMBERS = {"x86_64": {
    "recvfrom": 45, "recvmsg": 47, "read": 0, "sendto": 44, "sendmsg": 46, "write": 1, "writev": 20, "poll": 7,
    "ppoll": 271, "select": 23, "pselect6": 270, "epoll_wait": 232, "epoll_pwait": 281, "epoll_pwait2": 441,
    "epoll_ctl": 233, "io_uring_enter": 426, "io_submit": 209, "io_getevents": 208, "io_pgetevents": 333,
    "accept": 43, "accept4": 288}}
CONTEXT_SWITCHES = "context-switches"
PROFILE_HZ = 999   # samples per second of CPU: odd, so as not to beat with the kernel's tick
DEFAULT_WINDOW_S = 2.0
PERF_DATA, PERF_STAT, FOLDED = "perf.data", "perf-stat.csv", "stacks.folded"
Replies = Callable[[], int]


@dataclass
class Counts:
    """The counting phase."""

    seconds: float
    replies: int
    syscalls: dict[str, int]  # tracepoint name (recvfrom, epoll_wait, ...) -> calls
    total_syscalls: int | None  # None: not counted (syscalls_unavailable says why)
    context_switches: int
    voluntary_switches: int
    involuntary_switches: int
    syscalls_unavailable: str = ""  # why the system calls were not counted ("": they were)


@dataclass
class Profile:
    """The profile phase: its perf.data, and once folded its category shares and collapsed stacks."""

    seconds: float
    replies: int
    data: Path
    samples: int | None = None
    shares: dict[str, float] | None = None
    folded: Path | None = None
    recording: perf.Controlled | None = field(default=None, repr=False, compare=False)

    def wait(self) -> Profile:
        """Waits for perf record to have written perf.data (it was told to stop at the window's end).
        perf.PerfError when it failed."""
        if self.recording is not None:
            record, self.recording = self.recording, None
            try:
                err = record.stop()
            finally:
                record.cleanup()
            if record.proc.returncode not in (0, -2, 130) or not self.data.exists():
                raise perf.PerfError(f"perf record exited {record.proc.returncode}: {err.strip()[-300:]}")
        return self


@dataclass
class Anatomy:
    counts: Counts
    profile: Profile
    pids: list[int] = field(default_factory=list)

    @property
    def window_s(self) -> float:
        return self.counts.seconds + self.profile.seconds

    def per_reply(self, value: float) -> float | None:
        return value / self.counts.replies if self.counts.replies > 0 else None

    def syscalls_per_reply(self) -> dict[str, float | None]:
        """name -> calls per reply of every counted system call that was called, and "other": the rest of
        raw_syscalls:sys_enter. Empty when the system calls were not counted."""
        if self.counts.total_syscalls is None:
            return {}
        named = {name: n for name, n in self.counts.syscalls.items() if n}
        named["other"] = max(0, self.counts.total_syscalls - sum(named.values()))
        return {name: self.per_reply(n) for name, n in named.items()}

    def to_json(self, relative_to: Path | None = None) -> dict:
        """The point's "anatomy" entry: the contract keys (window_s, syscalls_per_reply, syscalls,
        context_switches_per_reply, cpu_share, folded_stacks) and the voluntary/involuntary split, the
        replies and the samples they rest on. cpu_share and folded_stacks are None until fold_profile().
        Where the system calls could not be counted, syscalls_per_reply is None, syscalls empty, and
        syscalls_unavailable says why (the key is there only then)."""
        folded = self.profile.folded
        if folded is not None and relative_to is not None:
            folded = folded.relative_to(relative_to)
        total = self.counts.total_syscalls
        missing = {"syscalls_unavailable": self.counts.syscalls_unavailable} if total is None else {}
        return {
            "window_s": round(self.window_s, 3),
            "syscalls_per_reply": self.per_reply(total) if total is not None else None,
            "syscalls": self.syscalls_per_reply(),
            "context_switches_per_reply": self.per_reply(self.counts.context_switches),
            "context_switches": {"voluntary": self.per_reply(self.counts.voluntary_switches),
                                 "involuntary": self.per_reply(self.counts.involuntary_switches)},
            "cpu_share": self.profile.shares,
            "folded_stacks": str(folded) if folded is not None else None,
            "replies": {"counting": self.counts.replies, "profile": self.profile.replies},
            "samples": self.profile.samples,
            **missing,
        }


@dataclass
class Instruments:
    """perf, found (or installed) and checked once per run; or why not. no_tracepoints: why perf cannot count
    the syscall tracepoints here ("": it can); the profile and the context switches need none.
    syscall_numbers: SYSCALLS' numbers, to count each as raw_syscalls:sys_enter filtered on it ({}: each as
    its own tracepoint)."""

    perf: str | None
    reason: str = ""
    no_tracepoints: str = ""
    syscall_numbers: dict[str, int] = field(default_factory=dict)

    @property
    def unavailable(self) -> Unavailable | None:
        return Unavailable(self.reason) if self.perf is None else None


def prepare(install: bool = True, perf_path: str | None = None, local: bool = True,
            no_tracefs: str = "") -> Instruments:
    """Finds perf (installing linux-perf as root on Debian when install), and checks it can sample and count
    here, and count the syscall tracepoints, filtered by system call number where this machine's are known.
    perf_path: that binary instead. local False: the server runs on another machine's engine, where this
    machine's perf cannot see it. no_tracefs: why tracefs is missing, when the caller knows
    (host/tracefs.py): the tracepoints' reason then. Never raises."""
    if not local:
        return Instruments(None, "the server runs on a remote Docker engine: perf sees only this machine's processes")
    if perf_path is None:
        found, why = perf.ensure(install)
        if found is None:
            return Instruments(None, why)
        perf_path = found
    reason = perf.check(perf_path)
    if reason:
        return Instruments(None, reason)
    no_tracepoints = no_tracefs or perf.check_tracepoints(perf_path)
    numbers = SYSCALL_NUMBERS.get(platform.machine(), {})
    if no_tracepoints or not numbers or perf.check_filter(perf_path, ALL_SYSCALLS, f"id == {numbers['read']}"):
        numbers = {}
    return Instruments(perf_path, no_tracepoints=no_tracepoints, syscall_numbers=numbers)


def start(instruments: Instruments, pids: Sequence[int], out_dir: Path) -> Opened | Unavailable:
    """A window on the processes (every PID of the server's container, procs.cgroup_pids), its profile's
    perf record started disabled: perf reads every process's mappings before it can be enabled, and the
    caller starts its load meanwhile, then calls Opened.measure(). perf.data goes to out_dir. Unavailable,
    with the reason, when perf is or fails to start; never raises."""
    if instruments.perf is None:
        return Unavailable(instruments.reason)
    pids = sorted(set(pids))
    if not pids:
        return Unavailable("no server process to watch")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        record = perf.Controlled.start(instruments.perf, "record", [
            "-e", "cpu-clock", "-F", str(PROFILE_HZ), "-g", "-q", "--no-bpf-event", "-o", str(out_dir / PERF_DATA),
            "-p", ",".join(map(str, pids))])
    except (perf.PerfError, OSError) as error:
        return Unavailable(f"perf failed: {error}")
    return Opened(instruments, instruments.perf, pids, out_dir, record)


def measure(instruments: Instruments, pids: Sequence[int], out_dir: Path, replies: Replies,
            seconds: float = DEFAULT_WINDOW_S) -> Window | Unavailable:
    """start() and Opened.measure() in one, for a load that is already running."""
    opened = start(instruments, pids, out_dir)
    return opened if isinstance(opened, Unavailable) else opened.measure(replies, seconds)


@dataclass
class Opened:
    """A window whose perf record is starting, disabled."""

    instruments: Instruments
    perf_path: str
    pids: list[int]
    out_dir: Path
    record: perf.Controlled

    def measure(self, replies: Replies, seconds: float = DEFAULT_WINDOW_S) -> Window | Unavailable:
        """A window of `seconds` while the load runs: the profile phase, then the counting phase. replies() is
        the server's cumulative reply count, read at each phase's edges. Returns as the window ends, with perf
        still exiting: Window.finish() gives the Anatomy. Unavailable, with the reason, when a phase fails;
        never raises. Where the syscall tracepoints cannot be counted, the counting phase counts the context
        switches alone and the Anatomy says why its system calls are missing."""
        started = [self.record]
        try:
            profile_s, profile_replies = _phase(self.record, replies, seconds / 2)
            profile = Profile(profile_s, profile_replies, self.out_dir / PERF_DATA, recording=self.record)
            # Only now: a syscall tracepoint sends every system call through the slow path from the moment perf
            # opens it, enabled or not.
            events, no_syscalls = stat_events(self.instruments)
            csv = self.out_dir / PERF_STAT
            args = [arg for event in events for arg in event.args]
            stat = perf.Controlled.start(self.perf_path, "stat", ["-x", ",", "-o", str(csv), *args,
                                                                  "-p", ",".join(map(str, self.pids))])
            started.append(stat)
            switches0 = procs.context_switches(self.pids)
            count_s, count_replies = _phase(stat, replies, seconds / 2)
            switches = procs.switches_between(switches0, procs.context_switches(self.pids))
        except BaseException as error:  # the caller's counter may raise too: no perf is left running
            for command in started:
                command.close()
                command.cleanup()
            if isinstance(error, perf.PerfError | OSError):
                return Unavailable(f"perf failed: {error}")
            raise
        return Window(profile, stat, csv, events, count_s, count_replies, switches, self.pids, no_syscalls)

    def close(self) -> None:
        """Gives the window up before measuring (its load did not start): perf record is killed."""
        self.record.close()
        self.record.cleanup()


@dataclass(frozen=True)
class Counted:
    """An event perf stat counts: its name in the counts (context-switches, raw_syscalls:sys_enter, and
    syscalls:sys_enter_NAME for each of SYSCALLS however it is counted) and perf stat's arguments for it."""

    name: str
    args: tuple[str, ...]

    @property
    def event(self) -> str:
        """The event as perf stat prints it: a filtered raw_syscalls:sys_enter under that name."""
        return self.args[1]


def stat_events(instruments: Instruments) -> tuple[list[Counted], str]:
    """perf stat's events: the context switches, and where the syscall tracepoints can be counted, every
    system call and each of SYSCALLS this kernel has (filtered by number where instruments has them, else
    its own tracepoint); with why they cannot ("": they can)."""
    why = instruments.no_tracepoints or perf.tracefs_missing()
    if not why and not perf.tracepoints([ALL_SYSCALLS]):
        why = f"this kernel has no {ALL_SYSCALLS} tracepoint"
    switches = Counted(CONTEXT_SWITCHES, ("-e", CONTEXT_SWITCHES))
    if why:
        return [switches], why
    numbers = instruments.syscall_numbers
    if numbers:
        each = [Counted(SYSCALL_EVENT + name, ("-e", ALL_SYSCALLS, "--filter", f"id == {numbers[name]}"))
                for name in SYSCALLS if name in numbers]
    else:
        each = [Counted(event, ("-e", event)) for event in perf.tracepoints([SYSCALL_EVENT + n for n in SYSCALLS])]
    return [switches, Counted(ALL_SYSCALLS, ("-e", ALL_SYSCALLS)), *each], ""


def counted_by_name(events: list[Counted], rows: list[tuple[str, int | None]]) -> dict[str, int | None]:
    """perf stat's rows (perf.parse_stat_rows), which it prints in the order of its events, by the events'
    names; {} when they do not line up."""
    if [event.event for event in events] != [name for name, _ in rows]:
        return {}
    return {event.name: value for event, (_, value) in zip(events, rows, strict=True)}


def _phase(command: perf.Controlled, replies: Replies, seconds: float) -> tuple[float, int]:
    """Enables the perf command, reads replies, waits, reads replies, disables it and tells it to stop:
    (seconds between the reads, replies between them)."""
    command.command("enable")
    replies0, t0 = replies(), time.monotonic()
    time.sleep(seconds)
    replies1, t1 = replies(), time.monotonic()
    command.command("disable")
    command.interrupt()
    return t1 - t0, replies1 - replies0


@dataclass
class Window:
    """A window whose perf commands are still exiting: perf stat unregisters each distinct tracepoint after an
    RCU grace period (one with the filtered events), and perf record writes its data. finish() waits for
    both; call it before the next measurement, for the system calls take the slow path until perf stat is
    done. no_syscalls: why the system calls are not among the events ("": they are)."""

    profile: Profile
    stat: perf.Controlled
    csv: Path
    events: list[Counted]
    seconds: float
    replies: int
    switches: tuple[int, int]
    pids: list[int]
    no_syscalls: str = ""

    def finish(self) -> Anatomy | Unavailable:
        """Waits for perf stat to exit (and perf record, long done by then) and reads the counts."""
        try:
            try:
                err = self.stat.stop()
            finally:
                self.stat.cleanup()
            self.profile.wait()
            rows = perf.parse_stat_rows(self.csv.read_text()) if self.csv.exists() else []
        except (perf.PerfError, OSError) as error:
            return Unavailable(f"perf stat failed: {error}")
        counted = counted_by_name(self.events, rows)
        if rows and not counted:
            return Unavailable(f"perf stat printed {len(rows)} counts for {len(self.events)} events: "
                               f"{', '.join(name for name, _ in rows)[:200]}")
        if counted.get(CONTEXT_SWITCHES) is None:
            return Unavailable(f"perf stat counted nothing for {CONTEXT_SWITCHES}: {err.strip()[-200:]}")
        return Anatomy(self._counts(counted, err), self.profile, self.pids)

    def _counts(self, counted: dict[str, int | None], err: str) -> Counts:
        """The counting phase's counts; the system calls as not counted, and why, when perf counted one of
        them not at all."""
        why = self.no_syscalls
        syscalls = [e.name for e in self.events if e.name != CONTEXT_SWITCHES]
        missing = [e for e in syscalls if counted.get(e) is None]
        if missing and not why:
            why = f"perf stat counted nothing for {', '.join(missing)}: {err.strip()[-200:]}"
        calls = {} if why else {e.removeprefix(SYSCALL_EVENT): counted[e] or 0 for e in syscalls
                                if e != ALL_SYSCALLS}
        total = None if why else counted[ALL_SYSCALLS] or 0
        return Counts(self.seconds, self.replies, calls, total, counted[CONTEXT_SWITCHES] or 0, *self.switches,
                      syscalls_unavailable=why)


def fold_profile(instruments: Instruments, profile: Profile, folded: Path | None = None) -> Profile:
    """`perf script` over the profile's perf.data, each sample folded into its category (fold.py) and the
    chains written in collapsed form to folded (default: stacks.folded beside perf.data). Fills the
    profile's samples, shares and folded path and returns it. Run it after the sweep, on this machine
    (kernel symbols come from /proc/kallsyms) and, for a container, user symbols from perf's build-id
    cache. perf.PerfError when perf script fails."""
    if instruments.perf is None:
        raise perf.PerfError(instruments.reason)
    folded = folded or profile.data.with_name(FOLDED)
    profile.wait()
    result = fold.fold(fold.parse_script(script_lines(instruments.perf, profile.data)))
    profile.samples, profile.shares = result.samples, result.shares()
    profile.folded = result.write_collapsed(folded)
    return profile


def script_lines(perf_path: str, data: Path) -> Iterator[str]:
    """`perf script` of data, streamed line by line (sample header: command and thread; frames: address and
    symbol; no inline expansion, which would run addr2line on every frame)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([perf_path, "script", "-i", str(data), "-F", "comm,tid,ip,sym", "--no-inline"],
                                stdout=subprocess.PIPE, stderr=err, text=True, errors="replace")
        assert proc.stdout is not None
        with proc.stdout:
            yield from proc.stdout
        if proc.wait() != 0:
            err.seek(0)
            raise perf.PerfError(f"perf script -i {data} exited {proc.returncode}: {err.read().strip()[-300:]}")

"""Who else held a point's CPUs while it was measured: one capture of the scheduler's switches per point on the
server's and the clients' CPUs (host/switches.py), each task judged ours or a third party's
(host/parties.py), and each set's interference with its flag (host/interference.py); where perf cannot
record the switches, third parties' share of the server's CPUs from /proc/stat (host/stat_fallback.py), the
stretch unavailable with the reason.

  begin()   before the point's quiet window: perf record starts, disabled, kept off the server's CPUs where
            the clients have CPUs of their own (UP), and left where the scheduler puts it where they share
            them (SMP); its set-up overlaps the quiet window
  open()    right before the load generator starts: the window opens
  close()   right after it has ended
  finish()  perf stopped, its switches read and judged while the server and deadconn still run (the load's
            tasks have gone: they are ours by name, parties.PROGRAMS)

perf records only the switches that a task other than our programs and the idle task is part of
(switches.quiet), so that it writes little while the point runs; what the capture does to the measured
figures is bench's `tail` item. What it adds to a point's wall time (begin's wait, finish) is not part of
its measurement.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .. import model
from ..anatomy import perf
from ..host import engine, interference, stat_fallback, switches, tail
from ..host.parties import Ours

GUEST = "measured in a guest (--kernels): the host's perf and /proc/stat cannot see the guest's tasks"
REMOTE = "the server runs on a remote Docker engine: this machine cannot see who else runs on its CPUs"


@dataclass
class Spent:
    """The wall time the watch added to the run's points, in seconds (run.json's timings "neighbours_s")."""

    seconds: float = 0.0

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds += time.monotonic() - started


@dataclass(frozen=True)
class Watch:
    """How this run watches its points' CPUs: perf's sched_switch (perf), /proc/stat where perf cannot record
    it (why_no_perf), or not at all (unavailable: why)."""

    perf: str | None
    why_no_perf: str = ""
    unavailable: str = ""
    spent: Spent = field(default_factory=Spent)

    @classmethod
    def prepare(cls, local: bool, in_guest: bool, no_tracefs: str = "") -> Watch:
        """perf found (installed as root on Debian, as for the anatomy) and able to record sched_switch here;
        no_tracefs: why tracefs is missing, when the caller knows."""
        if in_guest:
            return cls(None, unavailable=GUEST)
        if not local:
            return cls(None, unavailable=REMOTE)
        found, why = perf.ensure()
        if found is None:
            return cls(None, f"perf is not available: {why}")
        why = no_tracefs or switches.check(found)
        return cls(None, f"perf cannot record {switches.EVENT} here: {why}") if why else cls(found)

    def describe(self) -> dict:
        """What run.json records of it."""
        method = (None if self.unavailable else interference.PROC_STAT if self.perf is None
                  else interference.SCHED_SWITCH)
        return {"method": method, "why_no_perf": self.why_no_perf or None, "unavailable": self.unavailable or None}


@dataclass
class Watching:
    """One point's watch (the module's docstring): begin, open, close, finish."""

    watch: Watch
    cpus: dict[str, list[int]]  # by role (model.ROLES_WATCHED)
    folder: Path
    capture: switches.Capture | None = None
    failed: str = ""
    readings: list[stat_fallback.Reading] = field(default_factory=list)
    pinned: tuple[str, ...] | None = None  # the fallback's: containers on the server's CPUs (None: not known)
    held: list[switches.OnCpu] | None = None  # the capture's stretches, once finished
    party: interference.Party | None = None  # whose each task was, judged once from /proc while the run ran

    def open(self) -> None:
        with self.watch.spent.timing():
            try:
                if self.capture is not None:
                    self.capture.open()
                elif self.fallback_cpus():
                    self.readings = [stat_fallback.Reading.take(self.fallback_cpus(), self.pinned or ())]
            except (perf.PerfError, stat_fallback.Unreadable, OSError) as error:
                self.failed = str(error)

    def close(self) -> None:
        with self.watch.spent.timing():
            try:
                if self.capture is not None and not self.failed:
                    self.capture.close()
                elif self.readings and not self.failed:
                    self.readings.append(stat_fallback.Reading.take(self.fallback_cpus(), self.pinned or ()))
            except (perf.PerfError, stat_fallback.Unreadable, OSError) as error:
                self.failed = str(error)

    def fallback_cpus(self) -> list[int]:
        """The CPUs the /proc/stat fallback judges: the server's, when no client shares them (its time there
        is then the server container's alone, which its cgroup counts)."""
        server = self.cpus[model.SERVER_CPUS]
        return [] if self.pinned is None or set(server) & set(self.cpus[model.CLIENT_CPUS]) else server

    def finish(self, container_ids: Iterable[str]) -> dict[str, model.Interference] | model.Unavailable:
        """Each role's interference (container_ids: the run's containers, judged ours by their cgroups)."""
        with self.watch.spent.timing():
            try:
                if self.capture is not None:
                    return self._from_capture(container_ids)
                return self._from_readings()
            finally:
                shutil.rmtree(self.folder, ignore_errors=True)

    def _from_capture(self, container_ids: Iterable[str]) -> dict[str, model.Interference] | model.Unavailable:
        assert self.capture is not None and self.watch.perf is not None
        try:
            held = self.capture.finish(self.watch.perf)
        except perf.PerfError as error:
            return model.Unavailable(f"the capture of {switches.EVENT} failed: {self.failed or error}")
        if self.failed:
            return model.Unavailable(f"the capture of {switches.EVENT} failed: {self.failed}")
        # Each task is judged once (its /proc read once) for both sets of CPUs and the tail.
        party: interference.Party = functools.lru_cache(maxsize=None)(Ours.of_run(container_ids, os.getpid()).judge)
        self.held, self.party = held, party
        return {role: interference.from_switches(held, cpus, self.capture.start_ns, self.capture.end_ns,
                                                 party)
                for role, cpus in self.cpus.items()}

    def _from_readings(self) -> dict[str, model.Interference] | model.Unavailable:
        if self.failed or len(self.readings) != 2:
            return model.Unavailable(self.failed or f"{self.watch.why_no_perf}; and /proc/stat cannot tell "
                                     "third parties from the point's own programs here (they share the server's "
                                     "CPUs, or start with the measurement)")
        before, after = self.readings
        found = stat_fallback.interference(before, after, self.watch.why_no_perf)
        return {model.SERVER_CPUS: found}


def begin(watch: Watch, cpusets: dict[str, str], server_container: str | None = None,
          ) -> Watching | model.Unavailable:
    """A point's watch on its line's cpusets ({"server": ..., "clients": ...}), started; server_container: the
    server's full container ID, running before the point (the fallback takes its CPU time off the server's
    CPUs; None: pipetest's, which starts with the measurement)."""
    if watch.unavailable:
        return model.Unavailable(watch.unavailable)
    cpus = {role: engine.expand_cpu_list(cpusets[role]) for role in model.ROLES_WATCHED}
    folder = Path(tempfile.mkdtemp(prefix="epollbench-switches-"))
    watching = Watching(watch, cpus, folder, pinned=(server_container,) if server_container else None)
    if watch.perf is None:
        return watching
    watched = sorted({cpu for role in cpus.values() for cpu in role})
    away = sorted(set(cpus[model.CLIENT_CPUS]) - set(cpus[model.SERVER_CPUS])) or None
    with watch.spent.timing():
        try:
            watching.capture = switches.Capture.start(watch.perf, watched, folder, away)
        except perf.PerfError as error:
            shutil.rmtree(folder, ignore_errors=True)
            return model.Unavailable(f"perf record of {switches.EVENT} did not start: {error}")
    return watching


def judged(watching: Watching | model.Unavailable | None, container_ids: Callable[[], Iterable[str]],
           ) -> dict[str, model.Interference] | model.Unavailable | None:
    """A point's interference once its load has ended: watching finished (container_ids: the run's containers
    now, read only when there is a capture to judge), or what stood in for it."""
    if not isinstance(watching, Watching):
        return watching
    return watching.finish(container_ids() if watching.capture is not None else ())


def tail_of(watching: Watching | model.Unavailable | None, requests: bytes | None,
            why_no_requests: str) -> model.Tail | model.Unavailable:
    """An open-loop point's tail with and without the third parties' stretches on the server's CPUs (host/tail.py),
    from openload's --requests-out file (requests; None: why_no_requests) and the point's finished capture."""
    if isinstance(watching, model.Unavailable):
        return watching
    if watching is None or watching.held is None or watching.party is None or watching.capture is None:
        reason = watching.watch.why_no_perf if watching is not None and watching.watch.why_no_perf else ""
        return model.Unavailable(reason or "no capture of the switches: the third parties' stretches are not known")
    if requests is None:
        return model.Unavailable(why_no_requests)
    with watching.watch.spent.timing():
        intervals = tail.third_party(watching.held, watching.cpus[model.SERVER_CPUS], watching.party,
                                     watching.capture.start_ns, watching.capture.end_ns)
        return tail.join(tail.read(requests), intervals)


def flag(found: dict[str, model.Interference] | model.Unavailable | None) -> bool | None:
    """The point's *interfered* flag: the server's CPUs' (None: not known)."""
    if not isinstance(found, dict) or model.SERVER_CPUS not in found:
        return None
    return found[model.SERVER_CPUS].interfered

"""Measurement hygiene per point, after BenchExec: was the machine quiet, was the client the bottleneck,
was a container throttled, did the CPU clock move.

Each check snapshots when a point starts and reports when it ends, as {"flags": {...}, "checks": {...}}:
flags are booleans a report shows next to the number (None: could not tell), checks the raw numbers behind
them. merge() joins several results into the point's "flags" and "checks".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

PROC_STAT = Path("/proc/stat")
PROC_LOADAVG = Path("/proc/loadavg")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SYS_CPU = Path("/sys/devices/system/cpu")
# The quiet window measured just before a point, while the server and deadconn already idle: anything busy
# then is someone else's work. 0.5 s is 50 jiffies per CPU at USER_HZ 100, a 2 % resolution.
QUIET_WINDOW_S = 0.5
# A CPU busier than this in the quiet window means other load. The load average is recorded, not judged:
# its 1-minute decay still carries the previous point's load when points run back to back.
OTHER_LOAD_BUSY_PCT = 20.0
# A process using this share of the CPU it can use (one CPU per thread, within its cpuset) is saturated.
SATURATED_FRACTION = 0.9
FREQUENCY_CHANGE_FRACTION = 0.1

# The flags a point records: their names are a contract with the report and with tools that read points.
OTHER_LOAD = "other_load"
CLIENT_SATURATED = "client_saturated"
SERVER_SATURATED = "server_saturated"
CPU_THROTTLED = "cpu_throttled"
CPU_FREQUENCY_CHANGED = "cpu_frequency_changed"
# Third parties took more than 2 % of the server's CPUs, or held one of them over 1 ms at a stretch, while the
# point was measured (host/interference.py; run/neighbours.py watches each point).
INTERFERED = "interfered"
# openload's flags (images/openload), set on an open-loop point beside the checks': the generator sent late on a
# free connection (its fault) at least once, and often enough to move p99 (1% of its sends) or p99.9 (0.1%);
# the achieved rate fell below the offered one (the server's).
LAGGED = "lagged"
LAGGED_P99 = "lagged_p99"
LAGGED_P999 = "lagged_p999"
OVERLOADED = "overloaded"


def merge(*results: dict) -> dict:
    """One {"flags", "checks"} from several checks' results."""
    merged: dict = {"flags": {}, "checks": {}}
    for result in results:
        merged["flags"].update(result.get("flags", {}))
        merged["checks"].update(result.get("checks", {}))
    return merged


# ---- other load -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CpuJiffies:
    busy: int
    total: int


def parse_proc_stat(text: str) -> dict[str, CpuJiffies]:
    """Busy and total jiffies of "cpu" (all) and each "cpuN" line of /proc/stat. Busy is user, nice, system,
    irq, softirq and steal; idle and iowait are not; guest time is already inside user and nice."""
    cpus = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        name, *fields = line.split()
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in (fields + ["0"] * 8)[:8])
        busy = user + nice + system + irq + softirq + steal
        cpus[name] = CpuJiffies(busy, busy + idle + iowait)
    if "cpu" not in cpus:
        raise ValueError("not /proc/stat: no 'cpu' line")
    return cpus


def busy_pct(before: dict[str, CpuJiffies], after: dict[str, CpuJiffies]) -> dict[str, float | None]:
    """Per CPU, the busy share of the jiffies between two /proc/stat readings (None: no tick elapsed)."""
    shares = {}
    for name, end in after.items():
        start = before.get(name)
        if start is None:
            continue
        elapsed = end.total - start.total
        shares[name] = round(100.0 * (end.busy - start.busy) / elapsed, 1) if elapsed > 0 else None
    return shares


def parse_loadavg(text: str) -> dict:
    one, five, fifteen, tasks, _last_pid = text.split()
    runnable, threads = tasks.split("/")
    return {"1min": float(one), "5min": float(five), "15min": float(fifteen),
            "runnable": int(runnable), "threads": int(threads)}


def other_load(busy_before: dict[str, float | None], cpus: list[int] | None = None,
               threshold_pct: float = OTHER_LOAD_BUSY_PCT) -> bool:
    """Whether any of cpus (default: every CPU) was busier than threshold_pct in the quiet window."""
    names = [f"cpu{n}" for n in cpus] if cpus is not None else [n for n in busy_before if n != "cpu"]
    return any((busy_before.get(name) or 0.0) > threshold_pct for name in names)


@dataclass
class LoadSnapshot:
    """The machine's load at one moment: the load average, and each CPU's busy share over the quiet window
    just before it. Take one right before a point (other_load() judges it), and finish() it after."""

    cpus: list[int] | None
    loadavg: dict
    busy_window_pct: dict[str, float | None]
    window_s: float
    window_start: dict[str, CpuJiffies]
    stat: dict[str, CpuJiffies]

    @classmethod
    def take(cls, cpus: list[int] | None = None, window_s: float = QUIET_WINDOW_S) -> LoadSnapshot:
        """Blocks window_s to measure the quiet window; cpus are the ones other_load() judges (default all)."""
        window_start = parse_proc_stat(PROC_STAT.read_text())
        time.sleep(window_s)
        stat = parse_proc_stat(PROC_STAT.read_text())
        return cls(cpus, parse_loadavg(PROC_LOADAVG.read_text()), busy_pct(window_start, stat), window_s,
                   window_start, stat)

    def other_load(self, threshold_pct: float = OTHER_LOAD_BUSY_PCT) -> bool:
        return other_load(self.busy_window_pct, self.cpus, threshold_pct)

    def busy_until(self, later: LoadSnapshot) -> dict[str, float | None]:
        """Each CPU's busy share from this snapshot to the start of a later one's quiet window."""
        return busy_pct(self.stat, later.window_start)

    def to_dict(self) -> dict:
        return {"loadavg": self.loadavg, "cpu_busy_pct": self.busy_window_pct, "window_s": self.window_s,
                "judged_cpus": self.cpus}

    def finish(self) -> dict:
        """{"flags": {"other_load"}, "checks": the load before and CPU busy during the point}."""
        end = parse_proc_stat(PROC_STAT.read_text())
        return {
            "flags": {OTHER_LOAD: self.other_load()},
            "checks": {"load_before": self.to_dict(),
                       "loadavg_end": parse_loadavg(PROC_LOADAVG.read_text()),
                       "cpu_busy_pct_during": busy_pct(self.stat, end),
                       "other_load_threshold_pct": OTHER_LOAD_BUSY_PCT},
        }


# ---- who was the bottleneck ------------------------------------------------------------------------------

def _used_most_of(cpu_pct: float, cpus: float, threads: int) -> bool:
    if cpus <= 0 or threads < 1:
        raise ValueError(f"needs cpus > 0 and threads >= 1 (got {cpus}, {threads})")
    return cpu_pct >= SATURATED_FRACTION * 100.0 * min(cpus, threads)


def client_saturated(cpu_total_pct: float, cpus_of_client: float, threads: int = 1) -> bool:
    """Whether the load generator used >= 90 % of the CPU it can use: its cpuset (or --cpus), but no more
    than one CPU per thread (httperf: 1). cpu_total_pct is in % of one CPU, as httperf's "total".

    Debian's httperf 0.9.0 polls with a zero select() timeout: it spins, and its own CPU share says little
    about saturation (server_saturated() does)."""
    return _used_most_of(cpu_total_pct, cpus_of_client, threads)


def server_saturated(server_cpu_s: float, duration_s: float, cpus_of_server: float, workers: int = 1) -> bool:
    """Whether the server used >= 90 % of what it can use (one CPU per worker, within its cpuset) while the
    load ran. With a closed-loop load and no errors, a server that is not saturated was waiting for the
    client: the reply rate then measures the client, not the event mechanism."""
    if not duration_s > 0:
        raise ValueError(f"server_saturated needs duration_s > 0 (got {duration_s})")
    return _used_most_of(100.0 * server_cpu_s / duration_s, cpus_of_server, workers)


def bottleneck_check(client_cpu_pct: float, client_cpus: float, server_cpu_s: float | None = None,
                     duration_s: float | None = None, server_cpus: float | None = None,
                     workers: int = 1) -> dict:
    flags = {CLIENT_SATURATED: client_saturated(client_cpu_pct, client_cpus)}
    checks = {"client_cpu_pct": client_cpu_pct, "client_cpus": client_cpus}
    if server_cpu_s is not None and duration_s and server_cpus:
        flags[SERVER_SATURATED] = server_saturated(server_cpu_s, duration_s, server_cpus, workers)
        checks.update(server_cpu_pct=round(100.0 * server_cpu_s / duration_s, 1), server_cpus=server_cpus,
                      server_workers=workers)
    return {"flags": flags, "checks": checks}


# ---- CPU throttling (cgroup CFS quota) --------------------------------------------------------------------

def cgroup_cpu_stat(container_id: str, root: Path = CGROUP_ROOT) -> Path | None:
    """A Docker container's cpu.stat: cgroup v1 (cgroupfs or systemd driver) or v2; id may be a prefix."""
    patterns = [f"cpu/docker/{container_id}*/cpu.stat", f"cpu,cpuacct/docker/{container_id}*/cpu.stat",
                f"cpu/system.slice/docker-{container_id}*.scope/cpu.stat",
                f"system.slice/docker-{container_id}*.scope/cpu.stat"]
    for pattern in patterns:
        found = sorted(root.glob(pattern))
        if len(found) == 1:
            return found[0]
    return None


def parse_cpu_stat(text: str) -> dict:
    """nr_periods, nr_throttled and throttled_ns from a v1 (throttled_time, ns) or v2 (throttled_usec)
    cpu.stat."""
    values = dict(line.split() for line in text.splitlines() if line.strip())
    if "throttled_time" in values:
        throttled_ns = int(values["throttled_time"])
    elif "throttled_usec" in values:
        throttled_ns = 1000 * int(values["throttled_usec"])
    else:
        raise ValueError("not a cgroup cpu.stat: no throttled_time or throttled_usec")
    return {"nr_periods": int(values.get("nr_periods", 0)), "nr_throttled": int(values.get("nr_throttled", 0)),
            "throttled_ns": throttled_ns}


def throttle_delta(start: dict, end: dict) -> dict:
    return {key: end[key] - start[key] for key in ("nr_periods", "nr_throttled", "throttled_ns")}


@dataclass
class ThrottleSnapshot:
    """CFS throttling of named cgroups (by their cpu.stat path) over a point."""

    paths: dict[str, Path | None]
    start: dict[str, dict | None] = field(default_factory=dict)

    @classmethod
    def take(cls, paths: dict[str, Path | None]) -> ThrottleSnapshot:
        snapshot = cls(paths)
        snapshot.start = {name: _cpu_stat(path) for name, path in paths.items()}
        return snapshot

    @classmethod
    def of_containers(cls, container_ids: dict[str, str]) -> ThrottleSnapshot:
        """Snapshot of containers by role, e.g. {"server": id, "client": id}."""
        return cls.take({role: cgroup_cpu_stat(cid) for role, cid in container_ids.items()})

    def finish(self) -> dict:
        deltas = {}
        for name, path in self.paths.items():
            end, start = _cpu_stat(path), self.start.get(name)
            deltas[name] = throttle_delta(start, end) if start and end else None
        known = [d for d in deltas.values() if d is not None]
        throttled = any(d["nr_throttled"] > 0 for d in known) if known else None
        return {"flags": {CPU_THROTTLED: throttled}, "checks": {"cpu_throttling": deltas}}


def _cpu_stat(path: Path | None) -> dict | None:
    try:
        return parse_cpu_stat(path.read_text()) if path else None
    except FileNotFoundError:
        return None


# ---- CPU frequency ----------------------------------------------------------------------------------------

def read_cpu_frequencies(sys_cpu: Path = SYS_CPU) -> dict | None:
    """Per CPU, the current and maximum clock (MHz) and governor from cpufreq; None when /sys has no
    cpufreq (virtual machines, most containers)."""
    cpus = {}
    for cpufreq in sorted(sys_cpu.glob("cpu[0-9]*/cpufreq")):
        try:
            cur = int((cpufreq / "scaling_cur_freq").read_text()) / 1000
            most = int((cpufreq / "cpuinfo_max_freq").read_text()) / 1000
            governor = (cpufreq / "scaling_governor").read_text().strip()
        except (FileNotFoundError, ValueError):
            continue
        cpus[cpufreq.parent.name] = {"mhz": cur, "max_mhz": most, "governor": governor}
    return cpus or None


def frequency_changed(start: dict | None, end: dict | None,
                      fraction: float = FREQUENCY_CHANGE_FRACTION) -> bool | None:
    if not start or not end:
        return None
    return any(abs(end[cpu]["mhz"] - start[cpu]["mhz"]) > fraction * start[cpu]["mhz"]
               for cpu in start if cpu in end)


@dataclass
class FrequencySnapshot:
    start: dict | None

    @classmethod
    def take(cls) -> FrequencySnapshot:
        return cls(read_cpu_frequencies())

    def finish(self) -> dict:
        end = read_cpu_frequencies()
        return {"flags": {CPU_FREQUENCY_CHANGED: frequency_changed(self.start, end)},
                "checks": {"cpu_frequency_start": self.start, "cpu_frequency_end": end}}


# ---- all of them ------------------------------------------------------------------------------------------

@dataclass
class PointChecks:
    """Every check for one point: take() right before the load starts, finish() right after it."""

    load: LoadSnapshot
    throttle: ThrottleSnapshot
    frequency: FrequencySnapshot

    @classmethod
    def take(cls, cpus: list[int] | None = None, container_ids: dict[str, str] | None = None,
             window_s: float = QUIET_WINDOW_S) -> PointChecks:
        return cls(load=LoadSnapshot.take(cpus, window_s),
                   throttle=ThrottleSnapshot.of_containers(container_ids or {}),
                   frequency=FrequencySnapshot.take())

    def finish(self, client_cpu_pct: float | None = None, client_cpus: float | None = None,
               server_cpu_s: float | None = None, duration_s: float | None = None,
               server_cpus: float | None = None, workers: int = 1) -> dict:
        results = [self.load.finish(), self.throttle.finish(), self.frequency.finish()]
        if client_cpu_pct is not None and client_cpus is not None:
            results.append(bottleneck_check(client_cpu_pct, client_cpus, server_cpu_s, duration_s,
                                            server_cpus, workers))
        return merge(*results)
